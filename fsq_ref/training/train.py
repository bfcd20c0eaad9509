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
  schedule is sized to end when the time runs out, from the speed of the first `CALIBRATION_STEPS` steps and again
  a fifth of the budget later (`_TimeBudget`); that length is recorded in the checkpoint;
- Ctrl-C stops at the next step boundary and saves; a second Ctrl-C aborts at once. A NaN or infinite loss stops
  the run without saving, so the last good checkpoint stays on disk.

The host waits for the device only at logging intervals: steps are dispatched asynchronously in between, so the
next batch is assembled and sent to the devices while the current step computes.
"""

import contextlib
import dataclasses
import json
import math
import signal
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
from fsq_ref.training import checkpoint, distributed, finetune, precision, runlock
from fsq_ref.training import tensorboard as board_logs

CALIBRATION_STEPS = 30  # timed to size a time-limited schedule; the warm-up always covers them


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


class _StopOnInterrupt:
    """Turns the first Ctrl-C into a request to stop at the next step boundary; a second one interrupts at once."""

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self.previous)


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


class _TimeBudget:
    """Sizes the schedule of a run that has only a time limit, from the speed of its own steps.

    First from steps 10..CALIBRATION_STEPS (compilation excluded), to have a length before the warm-up ends; then once
    more, when about a fifth of the budget has passed, from the steps since: the first hundred or so steps run slower
    than later ones (memory is still being mapped in, caches warm up), and a schedule sized from steps 10..30 alone
    ended MaskGIT's 300 s run in the main job after 233 s (re-sized after a tenth of the budget, 490 s of 540).
    Either estimate keeps a reserve of RESERVE of the time left for logging and noise; the time of periodic
    evaluations is not budgeted for (the main job evaluates only at the end). The second sizing is skipped if a
    checkpoint may already hold the first length (the run would no longer resume to the same result), and the clock
    still stops a run that turns out slower.
    """

    RESERVE = 0.03

    def __init__(self, time_limit: float, checkpoint_every: int):
        self.time_limit, self.checkpoint_every, self.marks, self.resize_at = time_limit, checkpoint_every, {}, None

    def times(self, step: int) -> bool:
        """Whether `size` wants the clock after this step."""
        return step in (10, CALIBRATION_STEPS, self.resize_at)

    def size(self, step: int, elapsed: float) -> int | None:
        """The schedule's length as measured at `step` (`elapsed` seconds in), or None to keep the current one."""
        self.marks[step] = elapsed
        if step == 10:
            return None
        since = 10 if step == CALIBRATION_STEPS else CALIBRATION_STEPS
        per_step = (elapsed - self.marks[since]) / (step - since)
        total = step + max(0, int((1 - self.RESERVE) * (self.time_limit - elapsed) / per_step))
        if step == CALIBRATION_STEPS:  # measure again a fifth of the budget later, if the schedule lasts that long
            later = step + max(CALIBRATION_STEPS, int(0.2 * self.time_limit / per_step))
            self.resize_at = distributed.agree(later if later < total else -1)
        elif self.checkpoint_every and step >= self.checkpoint_every:  # a checkpoint holds the first length
            return None
        return distributed.agree(total)  # every process follows process 0's steps and schedule


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
    path = workdir / checkpoint.CHECKPOINT
    mesh = data_mesh(devices)
    if loop.batch_size % mesh.size:
        raise InputError(f"--batch-size {loop.batch_size} must be a multiple of the {mesh.size} devices JAX sees")
    key = jr.key(loop.seed)
    init = lambda: task.init_state(jr.fold_in(key, 0))
    start, total, origin = 0, loop.steps, None
    if resume:
        header, state = checkpoint.load(path, init())
        # Checkpoints written before `dtype` existed were trained in float32.
        saved_loop, now = {"dtype": "float32", **header.get("loop", {})}, dataclasses.asdict(loop)
        if (header.get("kind") != task.kind or header.get("task") != json.loads(json.dumps(task.header))
                or any(saved_loop.get(k) != now[k] for k in _RESUME_MUST_MATCH)):
            raise InputError(f"{path} was trained with other settings; resume with the same options, or use a new "
                             "--workdir")
        finetune.check_resume(header, init_from)
        start, total, origin = header["step"], header["total_steps"], header.get("init_from")
    elif path.exists():
        raise InputError(f"{workdir} already holds a checkpoint: pass --resume to continue it, or choose a new --workdir")
    elif init_from is not None:
        state, origin = finetune.start_from(task, init_from, init)
        echo(f"starting from the model of {init_from} (step {origin['step']}), with a fresh optimiser and schedule")
    else:
        state = init()
    main = distributed.is_main()  # only process 0 writes files
    board = board_logs.Writer(workdir, task.pictures) if tensorboard and main else None
    workdir.mkdir(parents=True, exist_ok=True)
    state = distributed.replicate(state, mesh)

    def save(state, step):
        if main:
            checkpoint.save(path, {"kind": task.kind, "task": task.header, "step": step, "total_steps": total,
                                   "loop": dataclasses.asdict(loop), **({"init_from": origin} if origin else {})},
                            distributed.local(state))

    def log(record):
        if main:
            with open(workdir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        if board:
            board.log(record)

    def evaluate(state):
        return task.evaluate(distributed.on_host(state), workdir) if main else {}

    warmup = max(loop.warmup_steps, CALIBRATION_STEPS)
    started = time.perf_counter()
    hist = jnp.zeros((task.codebook_size,), jnp.int32)
    step = start
    sizing = _TimeBudget(loop.time_limit, loop.checkpoint_every) if total is None else None
    bar = progress.Progress(f"training {task.kind}", total, start=start)
    with _StopOnInterrupt() as interrupt:
        batches = task.batches(start)
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
                stats = {k: float(v) for k, v in distributed.local(stats).items()}
                if not _finite(stats):
                    bar.close()
                    raise TrainingDiverged(
                        f"the loss became {stats['loss']} by step {step}; the last good checkpoint (if any) is kept "
                        f"at {path}: lower --learning-rate and train again")
                usage = metrics.codebook_stats(distributed.local(hist))["usage"]
                hist = jnp.zeros_like(hist)
                log({"step": step, "split": "train", **stats, "usage": usage, "lr": lr,
                     "seconds": round(elapsed, 2)})
                if main:
                    bar.report(step, _shown(stats, usage))
            out_of_time = loop.time_limit is not None and elapsed >= loop.time_limit
            if jax.process_count() > 1:  # stop together: on process 0's word, checked at logging intervals
                stopping = step % loop.log_every == 0 and distributed.agree(out_of_time or interrupt.requested)
                out_of_time, interrupt.requested = stopping and out_of_time, stopping and not out_of_time
            if out_of_time:
                bar.close()
                echo(f"time limit of {loop.time_limit:g} s reached at step {step}")
                break
            if interrupt.requested:
                bar.close()
                echo(f"interrupted at step {step}: saving")
                break
            if loop.checkpoint_every and step % loop.checkpoint_every == 0:
                save(state, step)
            if loop.eval_every and step % loop.eval_every == 0 and step != total:
                log({"step": step, "split": "eval", **evaluate(state)})
    bar.close()
    save(state, step)
    if not interrupt.requested:
        evaluation = evaluate(state)
        log({"step": step, "split": "eval", **evaluation})
    if board:
        board.close()
    if interrupt.requested:
        echo(f"saved {path} at step {step}: continue with --resume")
        return state, None
    return state, evaluation
