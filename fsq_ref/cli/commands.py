"""The `fsq` command line: each command parses its options and calls one library function.

Bad input (an `InputError`) becomes one line on stderr and exit status 2, never a traceback. The MaskGIT commands are
in `cli_maskgit`, the UViM commands in `cli_uvim`, the option groups and helpers they share in `cli_options`.
"""

import json
from pathlib import Path

import click

from fsq_ref import __version__, bottleneck, dense_tasks, tokenizer
from fsq_ref.cli import maskgit_commands, uvim_commands
from fsq_ref.cli.options import (
    choice_list,
    int_list,
    print_metrics,
    run_training,
    save_npz,
    with_data_options,
    with_training_options,
)
from fsq_ref.common import files
from fsq_ref.common.errors import InputError
from fsq_ref.data import datasets, tokens
from fsq_ref.data.images import grid, save_png
from fsq_ref.evaluation import runs
from fsq_ref.experiments import bench, study, study_report
from fsq_ref.training import allocator, checkpoint, distributed, export, presets, tokenizer_train, train


class BadInput(click.ClickException):
    exit_code = 2


class FsqGroup(click.Group):
    """Turns library errors into one-line messages for every command below it."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except InputError as e:
            raise BadInput(str(e)) from None
        except click.UsageError as e:  # a subcommand's bad option: one line, as for any other bad input
            raise BadInput(e.format_message()) from None
        except train.TrainingDiverged as e:
            raise click.ClickException(str(e)) from None


@click.group(cls=FsqGroup)
@click.version_option(__version__, prog_name="fsq-ref")
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
    allocator.keep_freed_memory()  # before JAX starts its CPU backend
    distributed.initialize(coordinator_address, num_processes, process_id, auto=auto is not None)


@main.group("train")
def train_group():
    """Train a model."""


@train_group.command("autoencoder")
@with_data_options(default="fashion-mnist")
@click.option("--quantizer", type=click.Choice(bottleneck.KINDS), default="fsq", show_default=True,
              help="fsq; vq (codebook + commitment loss); vq-entropy (+ entropy loss); vq-split (UViM: EMA + "
                   "splitting); vq-nosplit (UViM's EMA VQ without splitting)")
@click.option("--levels", default=None, help="FSQ levels, e.g. 8,6,5 (default: levels_for(--codebook-size), else 8,6,5)")
@click.option("--codebook-size", type=int, default=None, help="VQ codebook size; for FSQ, picks the paper's levels")
@click.option("--vq-dim", type=int, default=16, show_default=True, help="VQ codeword size")
@click.option("--preset", type=click.Choice(presets.AUTOENCODER), default="fashion-mnist", show_default=True,
              help="network size")
@with_training_options(batch_size=16, learning_rate=2e-3,
                       batch_help="small batches make more steps per second on a CPU; raise it on an accelerator")
def train_autoencoder(data_spec, data_dir, quantizer, levels, codebook_size, vq_dim, preset, steps, time_limit,
                      batch_size, learning_rate, seed, dtype, eval_every, workdir, resume, init_from, tensorboard):
    """Train an image tokenizer (autoencoder with an FSQ or VQ bottleneck).

    \b
    Example:
      fsq train autoencoder --data fashion-mnist --levels 8,6,5 --time-limit 100 --workdir runs/fsq
      fsq train autoencoder --quantizer vq --codebook-size 256 --steps 2000 --workdir runs/vq
      fsq train autoencoder --data my-photos/ --levels 8,6,5 --steps 500 --init-from runs/fsq --workdir runs/ft
    """
    levels = tuple(int_list(levels, "--levels", "8,6,5")) if levels is not None else None
    q = bottleneck.from_options(quantizer, levels=levels, codebook_size=codebook_size, vq_dim=vq_dim)
    loop = train.LoopConfig(steps=steps, time_limit=time_limit, batch_size=batch_size, seed=seed,
                            learning_rate=learning_rate, eval_every=eval_every, checkpoint_every=eval_every,
                            dtype=dtype)
    task = tokenizer_train.make_task(tokenizer.TokenizerConfig(presets.pick(presets.AUTOENCODER, preset), q), data_spec,
                               data_dir, batch_size=batch_size, seed=seed, weight_decay=loop.weight_decay,
                               dtype=dtype)
    ae = task.config.autoencoder
    click.echo(f"tokenizer: {q.describe()}, {ae.token_grid}x{ae.token_grid} tokens; data: {data_spec}, "
               f"{len(task.train_ds)} train and {len(task.eval_ds)} test images")
    run_training(task, workdir, loop, resume, init_from, tensorboard)
    click.echo(f"reconstructions: {Path(workdir) / 'reconstructions.png'}")


@main.group("study")
def study_group():
    """Reproduce the paper's studies."""


@study_group.command("codebook-size")
@with_data_options(default="fashion-mnist")
@click.option("--sizes", default=",".join(map(str, study.PAPER_SIZES)), show_default=True,
              help="target codebook sizes (each must be in the paper's Table 1 for FSQ)")
@click.option("--quantizers", "kinds", default=",".join(study.QUANTIZERS), show_default=True,
              help=f"comma-separated, from: {', '.join(bottleneck.KINDS)}")
@click.option("--steps", type=int, default=1500, show_default=True, help="training steps per run (equal budgets)")
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--preset", type=click.Choice(presets.AUTOENCODER), default="fashion-mnist", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--maskgit-steps", type=int, default=600, show_default=True,
              help=f"train a MaskGIT this long on the tokens of each {' and '.join(study.MASKGIT_KINDS)} run, for the "
                   "masked-transformer bits per token and the sampling Frechet distance (0: skip)")
@click.option("--workdir", required=True, type=click.Path(file_okay=False))
def study_codebook_size(data_spec, data_dir, sizes, kinds, steps, batch_size, preset, seed, maskgit_steps, workdir):
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
                        quantizers=choice_list(kinds, "--quantizers", bottleneck.KINDS), steps=steps,
                        batch_size=batch_size, preset=preset, seed=seed, maskgit_steps=maskgit_steps)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    for name in (study_report.RESULTS_MD, study_report.RESULTS_JSON, study_report.FIGURE):
        click.echo(f"wrote {Path(workdir) / name}")


train_group.add_command(maskgit_commands.train_maskgit)
train_group.add_command(uvim_commands.train_oracle)
train_group.add_command(uvim_commands.train_lm)
main.add_command(maskgit_commands.generate)
main.add_command(maskgit_commands.eval_samples)
main.add_command(uvim_commands.predict)


@main.command("bench")
@click.option("--areas", default=",".join(bench.AREAS), show_default=True,
              help=f"which tables to measure, comma-separated, from: {', '.join(bench.AREAS)}")
@click.option("--append", "append_to", default=None, type=click.Path(dir_okay=False),
              help="also append the report to this Markdown file (e.g. BENCHMARKS.md)")
def bench_command(areas, append_to):
    """Speed on the devices JAX sees: quantizers (and FSQ's share of memory bandwidth), each trainer's step against
    its data pipeline, compilations, MaskGIT generation and UViM decoding. Medians over repeats, warm-up excluded.

    \b
    Example:
      fsq bench --areas quantizers,tokenizer --append BENCHMARKS.md
    """
    report = bench.run(choice_list(areas, "--areas", bench.AREAS), echo=click.echo)
    if append_to is not None:
        with open(append_to, "a") as f:
            f.write("\n" + report + "\n")
        click.echo(f"appended to {append_to}")


SPLIT_HELP = ("train, test, or all (both). A folder with train/ and test/ subfolders is split by them; any other "
              "folder or .npz holds out a seeded 10% as test")


@main.command()
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
    model, qstate, header = tokenizer_train.load(workdir)
    ae = tokenizer.TokenizerConfig.from_dict(header["task"]["tokenizer"]).autoencoder
    token_file = tokens.load(tokens_path)
    tokens.check_made_by(token_file, header["sha256"], (ae.token_grid,) * 2, model.quantizer.codebook_size)
    images = tokenizer_train.decode_all(model, qstate, token_file.indices, batch_size)
    save_npz(out, images=images[..., 0] if images.shape[-1] == 1 else images)
    png = save_png(Path(out).with_suffix(".png"), grid([images[i:i + 8] for i in range(0, min(64, len(images)), 8)],
                                                       scale=3))
    click.echo(f"wrote {out}: images {list(images.shape)}\npicture: {png}")


@main.command("eval")
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
    metric (depth RMSE, colorization PSNR and colour Frechet distance, panoptic quality) of stage II, of its oracle
    and of the trivial baseline, with the codebook usage of each model's codes.

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
    seed = seed or 0
    result, spec, count = runs.evaluate(workdir, data_spec=data_spec, data_dir=data_dir, split=split,
                                        task_name=task_name, limit=limit, temperature=temperature, seed=seed)
    click.echo(f"{count} examples ({split} split of {spec})")
    if all(isinstance(v, dict) for v in result.values()):  # UViM: one row per model
        for name, row in result.items():
            click.echo(f"{name:>18}: ", nl=False)
            print_metrics(row)
    else:
        print_metrics(result)
    out = out or str(runs.evaluation_file(workdir, split, temperature, seed))
    step = checkpoint.read_run(workdir)["step"]
    decoding = {"temperature": temperature, "seed": seed} if temperature else {}
    files.write_atomic(out, json.dumps({"data": spec, "split": split, "examples": count, "step": step, **decoding,
                                             **result}, indent=2).encode())
    click.echo(f"wrote {out}")


@main.command()
@click.argument("workdir", type=click.Path(file_okay=False))
def info(workdir):
    """What a run folder holds: kind, the command that made it, step, data, model and quantizer, last evaluation.

    \b
    Example:
      fsq info runs/fsq
    """
    for name, value in runs.describe(workdir).items():
        click.echo(f"{name:>18}: {value}")


@main.command("export")
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
