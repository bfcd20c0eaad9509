"""The `fsq` command line: each command parses its options and calls one library function.

Bad input (an `InputError`) becomes one line on stderr and exit status 2, never a traceback. This module holds the
group and the tokenizer's training, the study and the benchmark; the commands that read a trained run folder
(encode, decode, eval, info, export) are in `cli.folder_commands`, the MaskGIT commands in `cli.maskgit_commands`,
the UViM commands in `cli.uvim_commands`, the option groups and helpers they share in `cli.options`.
"""

from pathlib import Path

import click

from fsq_ref import __version__, quantizer_config, tokenizer
from fsq_ref.cli import folder_commands, maskgit_commands, uvim_commands
from fsq_ref.cli.options import (
    choice_list,
    int_list,
    run_training,
    with_data_options,
    with_training_options,
)
from fsq_ref.common.errors import InputError
from fsq_ref.common.files import write_atomic
from fsq_ref.experiments import bench, study, study_report
from fsq_ref.training import allocator, distributed, presets, tokenizer_train, train


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
@click.option("--quantizer", type=click.Choice(quantizer_config.KINDS), default="fsq", show_default=True,
              help="fsq; vq (codebook + commitment loss); vq-entropy (+ entropy loss); vq-split (UViM: EMA + "
                   "splitting); vq-nosplit (UViM's EMA VQ without splitting)")
@click.option("--levels", default=None,
              help="FSQ levels, e.g. 8,6,5 (default: levels_for(--codebook-size), else 8,6,5)")
@click.option("--codebook-size", type=int, default=None, help="VQ codebook size; for FSQ, picks the paper's levels")
@click.option("--vq-dim", type=int, default=16, show_default=True, help="VQ codeword size")
@click.option("--codebooks", type=int, default=1, show_default=True,
              help="FSQ codes per position (fsq_ref.layers.FSQBottleneck); tokens get a last axis of this size")
@click.option("--stages", type=int, default=1, show_default=True,
              help="residual FSQ stages (fsq_ref.layers.ResidualFSQ); tokens get a last axis of this size")
@click.option("--preset", type=click.Choice(presets.AUTOENCODER), default="fashion-mnist", show_default=True,
              help="network size")
@with_training_options(batch_size=16, learning_rate=2e-3,
                       batch_help="small batches make more steps per second on a CPU; raise it on an accelerator")
def train_autoencoder(data_spec, data_dir, quantizer, levels, codebook_size, vq_dim, codebooks, stages, preset, steps,
                      time_limit,
                      batch_size, learning_rate, seed, dtype, eval_every, workdir, resume, init_from, tensorboard):
    """Train an image tokenizer (autoencoder with an FSQ or VQ bottleneck).

    \b
    Example:
      fsq train autoencoder --data fashion-mnist --levels 8,6,5 --time-limit 100 --workdir runs/fsq
      fsq train autoencoder --quantizer vq --codebook-size 256 --steps 2000 --workdir runs/vq
      fsq train autoencoder --data my-photos/ --levels 8,6,5 --steps 500 --init-from runs/fsq --workdir runs/ft
    """
    levels = tuple(int_list(levels, "--levels", "8,6,5")) if levels is not None else None
    q = quantizer_config.from_options(quantizer, levels=levels, codebook_size=codebook_size, vq_dim=vq_dim,
                                      codebooks=codebooks, stages=stages)
    loop = train.LoopConfig(steps=steps, time_limit=time_limit, batch_size=batch_size, seed=seed,
                            learning_rate=learning_rate, eval_every=eval_every, checkpoint_every=eval_every,
                            dtype=dtype)
    config = tokenizer.TokenizerConfig(presets.pick(presets.AUTOENCODER, preset), q)
    task = tokenizer_train.make_task(config, data_spec, data_dir, batch_size=batch_size, seed=seed,
                                     weight_decay=loop.weight_decay, dtype=dtype)
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
              help=f"comma-separated, from: {', '.join(quantizer_config.KINDS)}")
@click.option("--steps", type=int, default=1500, show_default=True, help="training steps per run (equal budgets)")
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--preset", type=click.Choice(presets.AUTOENCODER), default="fashion-mnist", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--maskgit-steps", type=int, default=600, show_default=True,
              help=f"train a MaskGIT this long on the tokens of each {' and '.join(study.MASKGIT_KINDS)} run, for the "
                   "masked-transformer bits per token and the sampling Frechet distance (0: skip)")
@click.option("--maskgit-until-flat", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="> 0: train each MaskGIT in warm-restarted rounds of --maskgit-steps until a round lowers its "
                   "held-out NLL by less than this many nats per masked token (at most "
                   f"{study.MAX_ROUNDS} rounds), so that its budget grows with the codebook; 0: a fixed budget")
@click.option("--workdir", required=True, type=click.Path(file_okay=False))
def study_codebook_size(data_spec, data_dir, sizes, kinds, steps, batch_size, preset, seed, maskgit_steps,
                        maskgit_until_flat, workdir):
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
                        quantizers=choice_list(kinds, "--quantizers", quantizer_config.KINDS), steps=steps,
                        batch_size=batch_size, preset=preset, seed=seed, maskgit_steps=maskgit_steps,
                        maskgit_until_flat=maskgit_until_flat)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    for name in (study_report.RESULTS_MD, study_report.RESULTS_JSON, study_report.FIGURE):
        click.echo(f"wrote {Path(workdir) / name}")




@main.command("bench")
@click.option("--areas", default=",".join(bench.AREAS), show_default=True,
              help=f"which tables to measure, comma-separated, from: {', '.join(bench.AREAS)}")
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="also write the whole report to this Markdown file, replacing it")
@click.option("--append", "append_to", default=None, type=click.Path(dir_okay=False), hidden=True,
              help="append the report to this file (kept for old scripts; --out writes a whole current file)")
def bench_command(areas, out, append_to):
    """Speed on the devices JAX sees: quantizers (and FSQ's share of memory bandwidth), each trainer's step against
    its data pipeline, compilations, MaskGIT generation and UViM decoding. Medians over repeats, warm-up excluded.

    \b
    Example:
      fsq bench --areas quantizers,tokenizer --out bench.md
    """
    report = bench.run(choice_list(areas, "--areas", bench.AREAS), echo=click.echo)
    if out is not None:
        write_atomic(out, (report + "\n").encode())
        click.echo(f"wrote {out}")
    if append_to is not None:
        with open(append_to, "a") as f:
            f.write("\n" + report + "\n")
        click.echo(f"appended to {append_to}")


train_group.add_command(maskgit_commands.train_maskgit)
train_group.add_command(uvim_commands.train_oracle)
train_group.add_command(uvim_commands.train_lm)
main.add_command(maskgit_commands.generate)
main.add_command(maskgit_commands.eval_samples)
main.add_command(uvim_commands.predict)
for command in (folder_commands.encode, folder_commands.decode, folder_commands.eval_command, folder_commands.info,
                folder_commands.export_command):
    main.add_command(command)
