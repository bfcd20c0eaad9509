"""The `fsq` command line: a thin layer that parses options and calls the library.

Every command's work is an importable function (`tokenizer`, `train`, `data`); this module only turns options into
their arguments and their results into files and lines of text. Bad input (an `InputError`) becomes one line on
stderr and exit status 2, never a traceback.
"""

import dataclasses
import json
from pathlib import Path

import click
import jax.random as jr
import numpy as np

from fsq_ref import (bench, checkpoint, cli_uvim, data, dense_tasks, distributed, features, fsq, maskgit, study,
                     tokenizer, tokens, train)
from fsq_ref.cli_options import (int_list, print_metrics, run_training, save_npz, with_data_options,
                                 with_training_options)
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
@click.option("--coordinator-address", default=None, metavar="HOST:PORT",
              help="multi-process training: process 0's address (or $FSQ_COORDINATOR_ADDRESS)")
@click.option("--num-processes", type=int, default=None,
              help="multi-process training: how many (or $FSQ_NUM_PROCESSES)")
@click.option("--process-id", type=int, default=None,
              help="multi-process training: this one's, 0.. (or $FSQ_PROCESS_ID)")
@click.option("--distributed", "auto", type=click.Choice(["auto"]), default=None,
              help="join a multi-process run with the settings a cluster provides (SLURM, Open MPI, Cloud TPU)")
def main(coordinator_address, num_processes, process_id, auto):
    """Finite Scalar Quantization (Mentzer et al., ICLR 2024): train FSQ/VQ tokenizers, MaskGIT on their tokens and
    UViM with an FSQ guiding code; turn images into tokens and back, generate, predict, and measure.

    Training uses every device JAX sees. For several hosts, start the same command on each, with the options above
    (see README, "GPUs and clusters").
    """
    distributed.initialize(coordinator_address, num_processes, process_id, auto=auto is not None)


@main.group("train")
def train_group():
    """Train a model."""


@train_group.command("autoencoder")
@with_data_options
@click.option("--quantizer", type=click.Choice(tokenizer.QUANTIZER_KINDS), default="fsq", show_default=True,
              help="fsq; vq (codebook + commitment loss); vq-entropy (+ entropy loss); vq-split (EMA + splitting)")
@click.option("--levels", default=None, help="FSQ levels, e.g. 8,6,5 (default: levels_for(--codebook-size), else 8,6,5)")
@click.option("--codebook-size", type=int, default=None, help="VQ codebook size; for FSQ, picks the paper's levels")
@click.option("--vq-dim", type=int, default=16, show_default=True, help="VQ codeword size")
@click.option("--preset", default="fashion-mnist", show_default=True, help="network size: tiny, fashion-mnist, ...")
@with_training_options(batch_size=16, learning_rate=2e-3,
                       batch_help="small batches make more steps per second on a CPU; raise it on an accelerator")
def train_autoencoder(data_spec, data_dir, quantizer, levels, codebook_size, vq_dim, preset, steps, time_limit,
                      batch_size, learning_rate, seed, dtype, eval_every, workdir, resume):
    """Train an image tokenizer (autoencoder with an FSQ or VQ bottleneck).

    \b
    Example:
      fsq train autoencoder --data fashion-mnist --levels 8,6,5 --time-limit 100 --workdir runs/fsq
      fsq train autoencoder --quantizer vq --codebook-size 256 --steps 2000 --workdir runs/vq
    """
    levels = tuple(int_list(levels, "--levels", "8,6,5")) if levels is not None else None
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
                            learning_rate=learning_rate, eval_every=eval_every, checkpoint_every=eval_every,
                            dtype=dtype)
    load = dict(data_dir=data_dir, image_size=ae.image_size, channels=ae.channels, seed=seed)
    task = tokenizer.AutoencoderTask(
        tokenizer.TokenizerConfig(ae, q), data.load(data_spec, "train", **load), data.load(data_spec, "test", **load),
        batch_size=batch_size, seed=seed, weight_decay=loop.weight_decay, data_header={"spec": data_spec},
        dtype=loop.dtype,
    )
    click.echo(f"{q.kind} tokenizer, codebook size {q.size}" + (f" (levels {list(q.levels)})" if q.kind == "fsq"
               else "") + f", {ae.token_grid}x{ae.token_grid} tokens, training on {data_spec}")
    run_training(task, workdir, loop, resume)
    click.echo(f"reconstructions: {Path(workdir) / 'reconstructions.png'}")


@train_group.command("maskgit")
@click.option("--tokens", "tokens_path", required=True, type=click.Path(dir_okay=False),
              help="training tokens: `fsq encode --split train`")
@click.option("--eval-tokens", default=None, type=click.Path(dir_okay=False),
              help="held-out tokens (`fsq encode --split test`); default: the last 5% of --tokens, not trained on")
@click.option("--preset", default="fashion-mnist", show_default=True, help="transformer size: tiny, fashion-mnist, paper")
@with_training_options(batch_size=64, learning_rate=1e-3)
def train_maskgit(tokens_path, eval_tokens, preset, steps, time_limit, batch_size, learning_rate, seed, dtype,
                  eval_every, workdir, resume):
    """Train a class-conditional MaskGIT transformer on a tokenizer's tokens.

    \b
    Example:
      fsq encode --workdir runs/fsq --split train --out runs/fsq/tokens-train.npz
      fsq encode --workdir runs/fsq --split test --out runs/fsq/tokens-test.npz
      fsq train maskgit --tokens runs/fsq/tokens-train.npz --eval-tokens runs/fsq/tokens-test.npz \\
          --time-limit 300 --workdir runs/maskgit
    """
    train_tokens = tokens.load(tokens_path)
    if eval_tokens is not None:
        held_out = tokens.load(eval_tokens)
        tokens.check_made_by(held_out, train_tokens.tokenizer, eval_tokens, train_tokens.grid,
                             train_tokens.codebook_size)
    else:
        n = len(train_tokens.indices) - max(1, len(train_tokens.indices) // 20)
        held_out = dataclasses.replace(train_tokens, indices=train_tokens.indices[n:], labels=_labels(train_tokens)[n:])
        train_tokens = dataclasses.replace(train_tokens, indices=train_tokens.indices[:n],
                                           labels=_labels(train_tokens)[:n])
    config = maskgit.preset(preset, codebook_size=train_tokens.codebook_size,
                            num_classes=train_tokens.num_classes or 1, grid=train_tokens.grid)
    loop = train.LoopConfig(steps=steps, time_limit=time_limit, batch_size=batch_size, seed=seed,
                            learning_rate=learning_rate, weight_decay=maskgit.WEIGHT_DECAY, eval_every=eval_every,
                            checkpoint_every=eval_every, dtype=dtype)
    task = maskgit.MaskGITTask(
        config, train_tokens.indices, _labels(train_tokens), eval_tokens=held_out.indices,
        eval_labels=_labels(held_out), batch_size=batch_size, seed=seed, weight_decay=loop.weight_decay,
        header={"tokenizer": train_tokens.tokenizer, "codebook_size": train_tokens.codebook_size}, dtype=loop.dtype,
    )
    click.echo(f"MaskGIT ({preset}) on {len(train_tokens.indices)} token grids of {config.grid[0]}x{config.grid[1]}, "
               f"codebook {config.codebook_size}, {config.num_classes} classes")
    run_training(task, workdir, loop, resume)


def _labels(token_file: tokens.TokenFile) -> np.ndarray:
    """Class labels, or class 0 for every grid of an unlabelled token file (one class: unconditional modelling)."""
    if token_file.labels is not None:
        return token_file.labels
    return np.zeros(len(token_file.indices), np.int32)


@main.command()
@click.option("--workdir", required=True, help="the MaskGIT folder (`fsq train maskgit`)")
@click.option("--autoencoder", required=True, help="the tokenizer folder whose tokens MaskGIT was trained on")
@click.option("--num-per-class", type=int, default=10, show_default=True)
@click.option("--labels", "label_text", default=None, help="classes to generate, e.g. 0,3,7 (default: all)")
@click.option("--unconditional", is_flag=True, help="generate without a class")
@click.option("--steps", type=int, default=12, show_default=True, help="parallel decoding steps")
@click.option("--guidance", type=float, default=0.0, show_default=True, help="classifier-free guidance scale a")
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
    model, header = maskgit.load(workdir)
    ae_model, qstate, ae_header = tokenizer.load(autoencoder)
    config = model.config
    if header["task"]["tokens"]["tokenizer"] != ae_header["sha256"]:
        raise InputError(f"{workdir} was trained on tokens of another tokenizer than {autoencoder}: give the "
                         "--autoencoder whose `fsq encode` made its training tokens")
    if num_per_class < 1 or steps < 1 or temperature <= 0:
        raise InputError("--num-per-class and --steps must be >= 1 and --temperature > 0")
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
    indices = maskgit.sample(model, labels, jr.key(seed), batch_size=batch_size, steps=steps, guidance=guidance,
                             temperature=temperature, choice_temperature=choice_temperature)
    images = np.concatenate([np.asarray(tokenizer.decode(ae_model, qstate, indices[i:i + batch_size]))
                             for i in range(0, len(indices), batch_size)])
    out_labels = np.where(labels == config.unconditional, -1, labels)
    save_npz(out, indices=indices, images=images[..., 0] if images.shape[-1] == 1 else images, labels=out_labels)
    rows = [images[i * num_per_class:i * num_per_class + min(num_per_class, 16)] for i in range(len(classes))]
    png = save_png(Path(out).with_suffix(".png"), grid(rows, scale=2))
    click.echo(f"wrote {out}: {len(images)} images of classes {classes if not unconditional else 'none'}\n"
               f"picture: {png}")


@main.command("eval-samples")
@click.option("--samples", required=True, type=click.Path(dir_okay=False), help="an .npz from `fsq generate`")
@with_data_options
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
    fake, labels = _read_samples(samples)
    classifier, info = features.load_or_train(data_spec, data_dir=data_dir, echo=click.echo)
    test = data.load(data_spec, "test", data_dir=data_dir, image_size=fake.shape[1], channels=fake.shape[3])
    real, real_labels = test.get(np.arange(len(test)))
    results = {"samples": features.sample_quality(classifier, real, fake, labels)}
    if autoencoder is not None:
        model, qstate, _ = tokenizer.load(autoencoder)
        # Reconstructions of as many test images as there are samples: Frechet distance depends on the set size.
        pick = np.random.default_rng(0).choice(len(real), size=min(len(fake), len(real)), replace=False)
        recon = tokenizer.reconstruct_all(model, qstate, real[pick])
        results["reconstructions"] = features.sample_quality(classifier, real, recon, real_labels[pick])
    click.echo(f"feature classifier: test accuracy {info['accuracy']:.2%}; reference: {len(real)} test images")
    click.echo("| images | Frechet distance | precision | recall | label accuracy |\n|---|---|---|---|---|")
    for name, r in results.items():
        accuracy = f"{r['label_accuracy']:.2%}" if "label_accuracy" in r else "-"
        click.echo(f"| {name} ({len(fake)}) | {r['frechet_distance']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | "
                   f"{accuracy} |")
    out = out or str(Path(samples).with_suffix(".quality.json"))
    checkpoint.write_atomic(out, json.dumps({"classifier_accuracy": info["accuracy"], **results}, indent=2).encode())
    click.echo(f"wrote {out}")


def _read_samples(path) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 images [N, H, W, C] and the conditioning labels (None where unconditional) of a samples file."""
    try:
        with np.load(path, allow_pickle=False) as f:
            images, labels = f["images"], f["labels"] if "labels" in f.files else None
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"cannot read samples {path} ({e}): give an .npz written by `fsq generate`") from None
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise InputError(f"{path}: images must be uint8 [N, H, W(, C)]; got {images.dtype} {list(images.shape)}")
    images = images[..., None] if images.ndim == 3 else images
    if labels is not None and np.all(labels < 0):
        labels = None  # unconditional samples: no class to check
    return images, labels


@main.group("study")
def study_group():
    """Reproduce the paper's studies."""


@study_group.command("codebook-size")
@with_data_options
@click.option("--sizes", default=",".join(map(str, study.PAPER_SIZES)), show_default=True,
              help="target codebook sizes (each must be in the paper's Table 1 for FSQ)")
@click.option("--quantizers", default=",".join(tokenizer.QUANTIZER_KINDS), show_default=True)
@click.option("--steps", type=int, default=1500, show_default=True, help="training steps per run (equal budgets)")
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--preset", default="fashion-mnist", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workdir", required=True, type=click.Path(file_okay=False))
def study_codebook_size(data_spec, data_dir, sizes, quantizers, steps, batch_size, preset, seed, workdir):
    """FSQ against three VQ variants as the codebook grows (paper Fig. 3): usage, PSNR, Frechet distance, bits.

    Trains one tokenizer per (quantizer, size) with the same network and step budget, measures each on the test
    split, and writes results.json, results.md and codebook-size.png in --workdir. Running it again skips finished
    runs and resumes interrupted ones.

    \b
    Example:
      fsq study codebook-size --data fashion-mnist --sizes 16,64,256,1024,4096,16384 --steps 1500 --workdir runs/study
    """
    try:
        study.run_study(workdir, data_spec=data_spec, data_dir=data_dir, sizes=int_list(sizes, "--sizes", "16,256"),
                        quantizers=tuple(quantizers.split(",")), steps=steps, batch_size=batch_size, preset=preset,
                        seed=seed)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    for name in (study.RESULTS_MD, study.RESULTS_JSON, study.FIGURE):
        click.echo(f"wrote {Path(workdir) / name}")


train_group.add_command(cli_uvim.train_oracle)
train_group.add_command(cli_uvim.train_lm)
main.add_command(cli_uvim.predict)


@main.command("bench")
@click.option("--areas", default=",".join(bench.AREAS), show_default=True, help="which tables to measure")
@click.option("--append", "append_to", default=None, type=click.Path(dir_okay=False),
              help="also append the report to this Markdown file (e.g. BENCHMARKS.md)")
def bench_command(areas, append_to):
    """Speed on the devices JAX sees: quantizers (and FSQ's share of memory bandwidth), each trainer's step against
    its data pipeline, compilations, MaskGIT generation and UViM decoding. Medians over repeats, warm-up excluded.

    \b
    Example:
      fsq bench --areas quantizers,tokenizer --append BENCHMARKS.md
    """
    chosen = areas.split(",")
    unknown = [a for a in chosen if a not in bench.AREAS]
    if unknown:
        raise InputError(f"unknown --areas {unknown}: choose from {', '.join(bench.AREAS)}")
    report = bench.run(chosen, echo=click.echo)
    if append_to is not None:
        with open(append_to, "a") as f:
            f.write("\n" + report + "\n")
        click.echo(f"appended to {append_to}")


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
    save_npz(out, images=images[..., 0] if images.shape[-1] == 1 else images)
    png = save_png(Path(out).with_suffix(".png"), grid([images[i:i + 8] for i in range(0, min(64, len(images)), 8)],
                                                       scale=3))
    click.echo(f"wrote {out}: images {list(images.shape)}\npicture: {png}")


@main.command("eval")
@click.option("--workdir", required=True, help="a tokenizer folder, or a UViM stage-I or stage-II folder")
@click.option("--task", "task_name", default=None, type=click.Choice(dense_tasks.TASKS),
              help="UViM: the task the folder was trained for (checked)")
@click.option("--data", "data_spec", default=None, help="default: the data the model was trained on")
@click.option("--data-dir", default=None, help="folder with the Fashion-MNIST IDX files")
@click.option("--split", default="test", show_default=True)
@click.option("--limit", type=int, default=None, help="UViM: only the first N examples")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="JSON file (default WORKDIR/eval-SPLIT.json)")
def eval_command(workdir, task_name, data_spec, data_dir, split, limit, out):
    """Measure a trained model on a dataset.

    A tokenizer: reconstruction L1, MSE and PSNR, codebook usage, perplexity and entropy. A UViM folder: the task's
    metric (depth RMSE, colorization PSNR and colour Frechet distance, panoptic quality) of stage II, of its oracle
    and of the trivial baseline, with the codebook usage of each model's codes.

    \b
    Example:
      fsq eval --workdir runs/fsq --data fashion-mnist --split test
      fsq eval --workdir runs/uvim/depth-lm --task depth
    """
    header = checkpoint.read_header(Path(workdir) / train.CHECKPOINT)
    if header.get("kind", "").startswith("uvim"):
        result = cli_uvim.evaluate(workdir, task_name, data_spec, data_dir, split, limit)
        data_spec = data_spec or header["task"]["data"]["spec"]
    else:
        if task_name is not None:
            raise InputError("--task is for UViM folders; a tokenizer has no task")
        model, qstate, header = tokenizer.load(workdir)
        ae = tokenizer.TokenizerConfig.from_dict(header["task"]["tokenizer"]).autoencoder
        data_spec = data_spec or header["task"]["data"]["spec"]
        ds = data.load(data_spec, split, data_dir=data_dir, image_size=ae.image_size, channels=ae.channels)
        result = tokenizer.evaluate(model, qstate, ds)
        print_metrics(result)
    out = out or str(Path(workdir) / f"eval-{split}.json")
    checkpoint.write_atomic(out, json.dumps({"data": data_spec, "split": split, "step": header["step"], **result},
                                            indent=2).encode())
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
