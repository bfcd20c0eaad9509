"""The shared training loop, on the tokenizer and on a toy task: budgets, divergence, data parallelism."""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fsq_ref import tokenizer
from fsq_ref.data import datasets
from fsq_ref.data.images import to_unit
from fsq_ref.quantizer_config import QuantizerConfig
from fsq_ref.training import checkpoint, distributed, presets, stopping, tokenizer_train, train


class ToyTask:
    """Fits one scalar to 1.0; the loss turns NaN from step `nan_at` on."""

    kind = "toy"
    header = {"toy": True}
    codebook_size = 4

    def __init__(self, nan_at=None):
        self.nan_at = nan_at

    def init_state(self, key):
        return {"w": jnp.zeros(()), "t": jnp.zeros((), jnp.int32)}

    def step(self, state, batch, key, lr):
        t = state["t"] + 1
        loss = (state["w"] - 1.0) ** 2
        if self.nan_at is not None:
            loss = jnp.where(t >= self.nan_at, jnp.nan, loss)
        w = state["w"] - lr * 2 * (state["w"] - 1.0)
        return {"w": w, "t": t}, {"loss": loss}, jnp.zeros((4,), jnp.int32)

    def batches(self, start_step):
        while True:
            yield np.zeros((4, 1), np.float32)

    def evaluate(self, state, workdir):
        return {"w": float(state["w"])}


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    loop = train.LoopConfig(steps=50, batch_size=4, log_every=1, checkpoint_every=5, learning_rate=0.1, warmup_steps=1)
    with pytest.raises(train.TrainingDiverged, match="step 12"):
        train.run(ToyTask(nan_at=12), tmp_path, loop, echo=lambda s: None)
    header = checkpoint.read_header(tmp_path / checkpoint.CHECKPOINT)
    assert header["step"] == 10  # the last checkpoint before the loss went bad
    like = ToyTask().init_state(None)
    _, state = checkpoint.load(tmp_path / checkpoint.CHECKPOINT, like)
    assert np.isfinite(state["w"]) and int(state["t"]) == 10


class StepClock:
    """A fake `time` module for train.py: the clock reads the summed cost of the steps taken so far."""

    def __init__(self, cost):
        self.cost, self.steps, self.now = cost, 0, 0.0

    def perf_counter(self):
        return self.now

    def tick(self):
        self.steps += 1
        self.now += self.cost(self.steps)


class ClockedToyTask(ToyTask):
    def __init__(self, clock):
        super().__init__()
        self.clock = clock

    def step(self, *args):
        out = super().step(*args)
        self.clock.tick()
        return out


@pytest.mark.parametrize("slow_from, slowdown, checkpoint_every, total, last_step, stopped_by_clock", [
    (30, 1, 1000, 95, 95, False),  # steady speed: the schedule ends just inside the budget
    (30, 2, 1000, 63, 63, False),  # slower after the calibration: the second sizing shortens the schedule
    (60, 2, 1000, 95, 79, True),  # slower only after the second sizing: the clock stops the run
    (30, 1, 50, 94, 94, False),  # a checkpoint came first: the first length stays (and resume stays exact)
])
def test_time_limit_sizes_the_schedule_and_stops(tmp_path, monkeypatch, slow_from, slowdown, checkpoint_every,
                                                 total, last_step, stopped_by_clock):
    # Step 1 costs 0.5 s (compilation), the next ones 1/64 s (binary fractions: the sums are exact), and after step
    # `slow_from` each one costs `slowdown` times that (the machine got busy). The budget is 2 s = 128 ticks.
    tick = 1 / 64
    clock = StepClock(lambda i: 0.5 if i == 1 else tick if i <= slow_from else slowdown * tick)
    monkeypatch.setattr(train, "time", clock)
    messages = []
    loop = train.LoopConfig(time_limit=2.0, batch_size=4, log_every=10, checkpoint_every=checkpoint_every)
    _, result = train.run(ClockedToyTask(clock), tmp_path, loop, echo=messages.append)

    # First sizing: steps 11-30 took 20 ticks, 1 a step; at step 30 the clock reads 32 + 29 = 61 ticks, leaving 67, of
    # which 97% is 64.99: 64 more steps, a schedule of 94, and a second sizing 30 steps later (at least a fifth of the
    # budget). At step 60 the clock reads 91 ticks at full speed: 37 left, 35.89 of them used, a schedule of 95; at
    # half speed it reads 121: 7 left, 3.4 steps of 2 ticks, a schedule of 63.
    header = checkpoint.read_header(tmp_path / checkpoint.CHECKPOINT)
    assert header["total_steps"] == total
    # Slowing down after step 60, the clock passes 128 ticks at step 79 (91 + 2 * 19 = 129 ticks).
    assert header["step"] == clock.steps == last_step
    # What the benchmark scripts read to tell a finished run from one to resume.
    assert checkpoint.progress(tmp_path) == (last_step, total) and checkpoint.progress(tmp_path / "absent") is None
    assert any(f"reached at step {last_step}" in m for m in messages) == stopped_by_clock
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert records[-1] == {"step": last_step, "split": "eval", "w": result["w"]}
    # Every 10th step and the end of a completed schedule are logged, with the seconds the clock read then.
    times = np.cumsum([clock.cost(i) for i in range(1, last_step + 1)])
    logged = [(r["step"], r["seconds"]) for r in records if r["split"] == "train"]
    expected_steps = [*range(10, last_step + 1, 10)] + ([] if stopped_by_clock or last_step % 10 == 0 else [last_step])
    assert logged == [(s, round(float(times[s - 1]), 2)) for s in expected_steps]


def test_eval_every_zero_evaluates_and_saves_only_at_the_end(tmp_path, monkeypatch):
    saved = []
    monkeypatch.setattr(checkpoint, "save", lambda path, header, state: saved.append(header["step"]))
    loop = train.LoopConfig(steps=25, batch_size=4, log_every=5, eval_every=0, checkpoint_every=0)
    train.run(ToyTask(), tmp_path, loop, echo=lambda s: None)
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in records if r["split"] == "eval"] == [25] and saved == [25]
    with pytest.raises(ValueError, match="--eval-every must be >= 0"):
        train.LoopConfig(steps=25, eval_every=-1)


def test_an_existing_run_is_not_overwritten(tmp_path):
    loop = train.LoopConfig(steps=3, batch_size=4)
    train.run(ToyTask(), tmp_path, loop, echo=lambda s: None)
    with pytest.raises(ValueError, match="--resume"):
        train.run(ToyTask(), tmp_path, loop, echo=lambda s: None)
    with pytest.raises(ValueError, match="other settings"):
        train.run(ToyTask(), tmp_path, train.LoopConfig(steps=3, batch_size=4, seed=1), resume=True)


def test_resume_needs_the_same_dtype(tmp_path):
    loop = train.LoopConfig(steps=3, batch_size=4)
    train.run(ToyTask(), tmp_path, loop, echo=lambda s: None)
    with pytest.raises(ValueError, match="other settings"):
        train.run(ToyTask(), tmp_path, train.LoopConfig(steps=3, batch_size=4, dtype="bfloat16"), resume=True)
    # A checkpoint written before `dtype` existed was trained in float32, and resumes in float32.
    path = tmp_path / checkpoint.CHECKPOINT
    header, state = checkpoint.load(path, ToyTask().init_state(None))
    del header["loop"]["dtype"], header["sha256"]
    checkpoint.save(path, header, state)
    train.run(ToyTask(), tmp_path, loop, resume=True, echo=lambda s: None)
    with pytest.raises(ValueError, match="--dtype must be one of float32, bfloat16"):
        train.LoopConfig(steps=3, dtype="float16")


def test_learning_rate_schedule():
    lrs = [train.learning_rate(s, 100, 1.0, 10) for s in range(100)]
    assert lrs[9] == 1.0 and all(a <= b for a, b in zip(lrs[:10], lrs[1:10]))  # warm-up rises to the peak
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] < 1e-3  # cosine decays to ~0


def test_sharded_step_matches_one_device(tmp_path):
    # The same run on 4 (simulated) devices and on 1: the batch is split, the result is the same.
    if jax.device_count() < 4:
        pytest.skip("needs 4 devices: XLA_FLAGS=--xla_force_host_platform_device_count=4")
    config = tokenizer.TokenizerConfig(presets.pick(presets.AUTOENCODER, "tiny"),
                                       QuantizerConfig("fsq", levels=(5, 5, 5)))
    ds = datasets.load("procedural:64", "train")
    loop = train.LoopConfig(steps=4, batch_size=16, log_every=1, warmup_steps=1)
    results = {}
    for n in (1, 4):
        task = tokenizer_train.AutoencoderTask(config, ds, ds, batch_size=16, seed=0, weight_decay=loop.weight_decay,
                                         data_header={})
        state, result = train.run(task, tmp_path / str(n), loop, devices=jax.devices()[:n], echo=lambda s: None)
        losses = [json.loads(line)["loss"] for line in open(tmp_path / str(n) / "metrics.jsonl") if '"train"' in line]
        results[n] = (jax.tree.leaves(state.model), losses, result)
    np.testing.assert_allclose(results[1][1], results[4][1], rtol=1e-5)
    # Adam divides by sqrt(v): on parameters whose gradient is ~0, float noise from the reduction order becomes an
    # update of up to +-lr (2e-3 here) per step, so parameters agree to a fraction of the learning rate. The
    # gradient itself is checked tightly below.
    for a, b in zip(results[1][0], results[4][0]):
        np.testing.assert_allclose(a, b, atol=1e-3)
    assert results[1][2]["usage"] == results[4][2]["usage"]


def test_sharded_gradient_matches_one_device(key):
    if jax.device_count() < 4:
        pytest.skip("needs 4 devices: XLA_FLAGS=--xla_force_host_platform_device_count=4")
    config = tokenizer.TokenizerConfig(presets.pick(presets.AUTOENCODER, "tiny"),
                                       QuantizerConfig("fsq", levels=(5, 5, 5)))
    model = tokenizer.Tokenizer(config, key=key)
    images = datasets.load("procedural:64", "train").get(np.arange(16))[0]

    @eqx.filter_jit
    def grad(model, images):
        x = to_unit(images)
        return eqx.filter_grad(lambda m: jnp.mean((m(x, None)[0] - x) ** 2))(model)

    one = grad(model, images)
    mesh = train.data_mesh(jax.devices()[:4])
    sharded = grad(jax.device_put(model, NamedSharding(mesh, P())), jax.device_put(images, NamedSharding(mesh, P("data"))))
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(sharded)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_processes_stop_together_at_a_logging_interval(monkeypatch):
    # Two processes, seen from one: each asks at logging intervals only and follows process 0's answer (`agree`).
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    process_zero = []  # what process 0 answers, in order; empty: this process is process 0
    monkeypatch.setattr(distributed, "agree", lambda value: process_zero.pop(0) if process_zero else value)
    index = {None: 0, stopping.TIME: 1, stopping.INTERRUPT: 2}
    interrupt = stopping.StopOnInterrupt()  # not entered: no handler, the request is set by hand
    interrupt.requested = True
    assert stopping.reason(3, 0.0, None, 10, interrupt) is None  # between intervals: go on, keeping the request
    assert stopping.reason(10, 0.0, None, 10, interrupt) == stopping.INTERRUPT
    # Process 0 ran out of time before this process's clock did, or was not interrupted: this one follows it.
    process_zero += [index[stopping.TIME], index[None]]
    assert stopping.reason(20, 1.0, 5.0, 10, stopping.StopOnInterrupt()) == stopping.TIME
    assert stopping.reason(30, 1.0, 5.0, 10, interrupt) is None and not process_zero
    monkeypatch.setattr(jax, "process_count", lambda: 1)
    assert stopping.reason(3, 5.0, 5.0, 10, interrupt) == stopping.TIME  # one process: after any step
    assert stopping.reason(3, 1.0, None, 10, interrupt) == stopping.INTERRUPT
