"""The training loop shared by every trainer, and the optimiser they share: it feeds batches, logs, evaluates and
saves; the math is in the task.

A task (the tokenizer here, MaskGIT and UViM elsewhere) supplies its initial state, one jitted step, its batches
and its evaluation; this loop adds what every run needs:

- data parallelism: a 1-D `jax.sharding.Mesh` over every device JAX sees, the batch split along it and the state
  replicated, so the jitted step runs unchanged on one CPU or eight GPUs (XLA inserts the gradient all-reduce), and
  across hosts: each process loads its own rows of every batch and only process 0 writes files (`distributed`);
- progress with the live loss and codebook usage (`progress`: a bar on a terminal, one line per logging interval in
  a log file), `metrics.jsonl`, evaluation on held-out data every `eval_every` steps (0: never) and at the end;
- one checkpoint file, written atomically every `checkpoint_every` steps (0: never) and at the end; `resume`
  continues exactly where it stopped (batches and random keys are functions of the step, the learning rate of the
  step and the recorded schedule length), so a resumed run ends with the same parameters as an uninterrupted one;
- fine-tuning: `init_from` starts a new run from another run's model, with a fresh optimiser and schedule
  (`finetune`); `tensorboard` also writes the logs for TensorBoard (`tensorboard`);
- two budgets: `steps`, and `time_limit` seconds of wall-clock training. With a time limit and no step count, the
  schedule is sized to end when the time runs out, from the speed of the first `stopping.CALIBRATION_STEPS` steps and
  again a fifth of the budget later (`stopping.TimeBudget`); that length is recorded in the checkpoint;
- Ctrl-C stops at the next step boundary and saves; a second Ctrl-C aborts at once. A NaN or infinite loss stops
  the run without saving, so the last good checkpoint stays on disk.

The host waits for the device only at logging intervals: steps are dispatched asynchronously in between, so the
next batch is assembled and sent to the devices while the current step computes.
"""

import contextlib
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Callable, Iterator, Protocol

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jax.sharding import Mesh

from fsq_ref.common import progress
from fsq_ref.common.errors import InputError
from fsq_ref.evaluation import metrics
from fsq_ref.quantizers import USAGE_METRICS, Quantized
from fsq_ref.training import checkpoint, distributed, finetune, outputs, precision, runlock, stopping


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    steps: int | None = None  # length of the schedule; None: sized from time_limit
    time_limit: float | None = None  # seconds of training, compilation included
    batch_size: int = 16
    seed: int = 0
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 1e-4
    log_every: int = 25
    eval_every: int = 1000  # 0: only at the end
    checkpoint_every: int = 1000  # 0: only at the end (and on Ctrl-C)
    dtype: str = "float32"  # compute dtype of the training step (`precision`); parameters stay float32

    def __post_init__(self):
        if self.steps is None and self.time_limit is None:
            raise InputError("give a budget: --steps N, --time-limit SECONDS, or both")
        if self.steps is not None and self.steps < 1:
            raise InputError(f"--steps must be >= 1; got {self.steps}")
        if self.time_limit is not None and self.time_limit <= 0:
            raise InputError(f"--time-limit must be > 0 seconds; got {self.time_limit}")
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be >= 1; got {self.batch_size}")
        if self.eval_every < 0 or self.checkpoint_every < 0:
            raise InputError(f"--eval-every must be >= 0 (0: evaluate only at the end); got {self.eval_every}")
        precision.compute_dtype(self.dtype)


class Task(Protocol):
    """What a trainer plugs into `run`."""

    kind: str  # recorded in the checkpoint header ("autoencoder", "maskgit", ...)
    header: dict  # JSON-serialisable description (config, data, ...) recorded in the checkpoint
    codebook_size: int  # for the live usage display
    pictures: tuple[str, ...]  # PNGs that `evaluate` writes in the run folder (shown in TensorBoard)

    def architecture(self, header: dict) -> dict:
        """The part of a task header (this task's, or a checkpoint's "task") that fixes the model's weights: a run
        can start from another (`init_from`) only where these are equal."""
        ...

    def init_state(self, key) -> object: ...

    def step(self, state, batch, key, lr) -> tuple[object, dict, jax.Array]:
        """(state, batch, key, lr) -> (state, scalar stats, int32 [K] code histogram of the batch)."""
        ...

    def batches(self, start_step: int) -> Iterator[tuple]: ...

    def evaluate(self, state, workdir: Path) -> dict: ...


def optimizer(weight_decay: float, *, b2: float = 0.99) -> optax.GradientTransformation:
    """AdamW (b1 0.9) without its learning rate: steps scale the update by a learning rate passed in as an array, so
    that the schedule (`learning_rate`, whose length may be fixed only once a time budget is known) never forces a
    recompile. MaskGIT uses b2 = 0.96."""
    return optax.chain(optax.scale_by_adam(b1=0.9, b2=b2), optax.add_decayed_weights(weight_decay))


def quantizer_outputs(q: Quantized, codebook_size: int) -> tuple[dict, jax.Array]:
    """What a training step passes on from its quantizer call: the call's diagnostics (its auxiliary losses) for the
    step's stats, and the histogram of its codes. The loop measures usage over each whole logging interval from the
    histograms, so the call's own usage metrics are left out, and with them their sort in every step."""
    diagnostics = {k: v for k, v in q.metrics.items() if k not in USAGE_METRICS}
    return diagnostics, metrics.histogram(q.indices, codebook_size)


def apply_updates(opt: optax.GradientTransformation, grads, opt_state, model, lr, multipliers=None):
    """One optimiser step of `model` at learning rate `lr`: returns (model, opt_state). `multipliers`, a pytree of
    numbers shaped as `eqx.filter(model, eqx.is_array)`, scales each array's learning rate (per-module rates)."""
    # optax's bias correction mixes its int32 step count with floats; allow that here even when a caller (our tests)
    # makes dtype promotion strict everywhere else.
    with jax.numpy_dtype_promotion("standard"):
        updates, opt_state = opt.update(grads, opt_state, eqx.filter(model, eqx.is_array))
    if multipliers is None:
        return eqx.apply_updates(model, jax.tree.map(lambda u: -lr * u, updates)), opt_state
    return eqx.apply_updates(model, jax.tree.map(lambda u, m: -lr * m * u, updates, multipliers)), opt_state


def learning_rate(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up to `peak` over `warmup` steps, then cosine decay to zero at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def data_mesh(devices=None) -> Mesh:
    """A 1-D mesh named "data" over `devices` (default: every device JAX sees)."""
    return Mesh(np.array(devices or jax.devices()), ("data",))


# Settings that fix what a step computes: a resumed run must use the same ones to continue the same trajectory.
_RESUME_MUST_MATCH = ("batch_size", "seed", "learning_rate", "warmup_steps", "weight_decay", "dtype")


def _finite(stats: dict) -> bool:
    return all(math.isfinite(v) for v in stats.values())


def _shown(stats: dict, usage: float) -> dict[str, float]:
    """The figures progress shows: the loss, PSNR (from an image MSE on [-1, 1]) or accuracy, and codebook usage."""
    shown = {"loss": stats["loss"]}
    if "mse" in stats:
        shown["psnr"] = metrics.psnr(stats["mse"] / 4.0)
    if "accuracy" in stats:
        shown["accuracy"] = stats["accuracy"]
    return {**shown, "usage": usage}


def run(task: Task, workdir: str | Path, loop: LoopConfig, *, resume: bool = False, init_from: str | Path | None = None,
        tensorboard: bool = False, devices=None,
        echo: Callable[[str], None] = progress.say) -> tuple[object, dict | None]:
    """Train `task` in `workdir` on `devices` (default: all), from scratch or from the model of the run folder
    `init_from`; returns (final state, final evaluation).

    The evaluation is None when the run was interrupted (Ctrl-C): it saved its state and can be resumed. A folder in
    which another run is alive is refused (`runlock`; process 0 holds the lock for all processes).
    """
    with runlock.hold(workdir) if distributed.is_main() else contextlib.nullcontext():
        return _run(task, Path(workdir), loop, resume, init_from, tensorboard, devices, echo)


def _run(task: Task, workdir: Path, loop: LoopConfig, resume: bool, init_from, tensorboard: bool, devices,
         echo) -> tuple[object, dict | None]:
    mesh = data_mesh(devices)
    if loop.batch_size % mesh.size:
        raise InputError(f"--batch-size {loop.batch_size} must be a multiple of the {mesh.size} devices JAX sees")
    start = _start(task, workdir / checkpoint.CHECKPOINT, loop, resume, init_from, echo)
    out = outputs.RunOutputs(task, workdir, dataclasses.asdict(loop), start.origin, tensorboard)
    state, step, total, stopped = _train(task, distributed.replicate(start.state, mesh), start, mesh, loop, out)
    if stopped == stopping.TIME:
        echo(f"time limit of {loop.time_limit:g} s reached at step {step}")
    elif stopped == stopping.INTERRUPT:
        echo(f"interrupted at step {step}: saving")
    out.save(state, step, total)
    evaluation = None
    if stopped != stopping.INTERRUPT:
        evaluation = out.evaluate(state)
        out.log({"step": step, "split": "eval", **evaluation})
    out.close()
    if evaluation is None:
        echo(f"saved {out.path} at step {step}: continue with --resume")
    return state, evaluation


@dataclasses.dataclass(frozen=True)
class _Start:
    """Where a run begins: its state (on the host), step, schedule length (None: to be sized from the time limit)
    and the record of the run it was fine-tuned from (None: none)."""

    state: object
    step: int
    total: int | None
    origin: dict | None


def _start(task: Task, path: Path, loop: LoopConfig, resume: bool, init_from, echo) -> _Start:
    """A fresh state; or with `resume`, the checkpoint at `path` (trained with the same settings); or the model of
    the run folder `init_from` with a fresh optimiser and schedule. A checkpoint is never started over."""
    init = lambda: task.init_state(jr.fold_in(jr.key(loop.seed), 0))
    if resume:
        header, state = checkpoint.load(path, init())
        # Checkpoints written before `dtype` existed were trained in float32.
        saved_loop, now = {"dtype": "float32", **header.get("loop", {})}, dataclasses.asdict(loop)
        if (header.get("kind") != task.kind or header.get("task") != json.loads(json.dumps(task.header))
                or any(saved_loop.get(k) != now[k] for k in _RESUME_MUST_MATCH)):
            raise InputError(f"{path} was trained with other settings; resume with the same options, or use a new "
                             "--workdir")
        finetune.check_resume(header, init_from)
        return _Start(state, header["step"], header["total_steps"], header.get("init_from"))
    if path.exists():
        raise InputError(f"{path.parent} already holds a checkpoint: pass --resume to continue it, or choose a new "
                         "--workdir")
    if init_from is not None:
        state, origin = finetune.start_from(task, init_from, init)
        echo(f"starting from the model of {init_from} (step {origin['step']}), with a fresh optimiser and schedule")
        return _Start(state, 0, loop.steps, origin)
    return _Start(init(), 0, loop.steps, None)


def _train(task: Task, state, start: _Start, mesh: Mesh, loop: LoopConfig,
           out: outputs.RunOutputs) -> tuple[object, int, int | None, str | None]:
    """The step loop, from `start.step` until the schedule ends or `stopping.reason` stops it, with the logs,
    checkpoints and evaluations due on the way. Returns (state, step, schedule length, None or why it stopped
    early: `stopping.TIME` or `stopping.INTERRUPT`). Raises `TrainingDiverged` when the loss is not finite."""
    key, warmup = jr.key(loop.seed), max(loop.warmup_steps, stopping.CALIBRATION_STEPS)
    started = time.perf_counter()
    hist = jnp.zeros((task.codebook_size,), jnp.int32)
    step, total, stopped = start.step, start.total, None
    sizing = stopping.TimeBudget(loop.time_limit, loop.checkpoint_every) if total is None else None
    bar = progress.Progress(f"training {task.kind}", total, start=step)
    with stopping.StopOnInterrupt() as interrupt:
        batches = task.batches(step)
        while total is None or step < total:
            batch = distributed.global_batch(next(batches), mesh)
            lr = learning_rate(step, total or 10**9, loop.learning_rate, warmup)
            state, stats, batch_hist = task.step(state, batch, jr.fold_in(key, step + 1), jnp.float32(lr))
            hist = hist + batch_hist
            step += 1
            elapsed = time.perf_counter() - started
            if sizing is not None and sizing.times(step):
                jax.block_until_ready(stats)
                sized = sizing.size(step, time.perf_counter() - started)
                if sized is not None:
                    total = bar.total = sized
            if step % loop.log_every == 0 or step == total:
                _log_train(out, bar, step, stats, hist, lr, elapsed)
                hist = jnp.zeros_like(hist)
            stopped = stopping.reason(step, elapsed, loop.time_limit, loop.log_every, interrupt)
            if stopped is not None:
                break
            if loop.checkpoint_every and step % loop.checkpoint_every == 0:
                out.save(state, step, total)
            if loop.eval_every and step % loop.eval_every == 0 and step != total:
                out.log({"step": step, "split": "eval", **out.evaluate(state)})
    bar.close()
    return state, step, total, stopped


def _log_train(out: outputs.RunOutputs, bar: progress.Progress, step: int, stats: dict, hist, lr: float,
               elapsed: float) -> None:
    """Log the training figures of `step` (`stats`, and the codebook usage of the codes counted in `hist` since the
    last logging interval) and show them; the host waits for the device here."""
    stats = {k: float(v) for k, v in distributed.local(stats).items()}
    if not _finite(stats):
        bar.close()
        raise TrainingDiverged(f"the loss became {stats['loss']} by step {step}; the last good checkpoint (if any) is "
                               f"kept at {out.path}: lower --learning-rate and train again")
    usage = metrics.codebook_stats(distributed.local(hist))["usage"]
    out.log({"step": step, "split": "train", **stats, "usage": usage, "lr": lr, "seconds": round(elapsed, 2)})
    if out.main:
        bar.report(step, _shown(stats, usage))
