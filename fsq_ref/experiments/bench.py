"""`fsq bench`: the project's speed on whatever device JAX sees, one Markdown table per area.

Areas:
- quantizers: FSQ quantize + indices ([8,5,5,5], 2^10 codes) and VQ nearest-neighbour lookup (1024 codes, same D)
  over 4M vectors, in vectors/s; for FSQ also its share of the same-bytes floor: a pass timed in the same run that
  reads the latents and writes codes and an int32 index with trivial arithmetic (`same_bytes_fn`), the fastest any
  quantizer with FSQ's inputs and outputs can go.
- folders: reading a folder of JPEG files (`image_files.ImageFolder`: decode, resize, centre crop) at 128 and 256
  px, one file at a time and with the thread pool that training uses, in images/s.
- tokenizer, maskgit, uvim: one training step of each trainer on its default preset (images/s, tokens/s), the data
  pipeline's rate for the same batches (host batch assembly + transfer to the devices; it must outrun the step), and
  the compilations seen while the timed steps ran (0: one compilation per shape). Then generation: MaskGIT at
  batch 256 with 12 steps, and UViM stage II decoding (greedy, batch 256), each one compiled call.

Model FLOP utilisation (MFU): the FLOPs of the matrix products and convolutions of one step or generation call
(`flops.count`, on the traced function) over its median time, as a fraction of the best rate of large float32 matrix
products timed in the same run (`matmul_rate`): how close a step comes to what the device does at best.

Every figure is a median over repeats after a warm-up call (which compiles). Times are wall clock: the host is
waited for only once per repeat.
"""

import datetime
import functools
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from PIL import Image

from fsq_ref import dense_tasks, fsq, maskgit, tokenizer, uvim, vq
from fsq_ref.common import provenance
from fsq_ref.common.errors import InputError
from fsq_ref.data import datasets, dense, image_files
from fsq_ref.evaluation import flops
from fsq_ref.quantizer_config import QuantizerConfig
from fsq_ref.training import maskgit_train, presets, tokenizer_train, uvim_train

AREAS = ("quantizers", "folders", "tokenizer", "maskgit", "uvim")


def median_seconds(fn: Callable, *args, repeats: int = 5, budget: float = 60.0) -> tuple[float, int]:
    """Median wall time of `repeats` calls of fn(*args), after one untimed call (compilation, warm-up); stops early
    once `budget` seconds have been timed. Returns (median seconds, calls timed)."""
    jax.block_until_ready(fn(*args))
    times = []
    while len(times) < repeats and sum(times) < budget:
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times), len(times)


@functools.cache
def matmul_rates(sizes: tuple[int, ...] = (1024, 1536, 2048)) -> dict[int, float]:
    """FLOP/s of an n x n by n x n float32 matrix product (2 n^3 FLOPs) for each n in `sizes`, each the fastest of
    5 calls: what the device does at best, measured in the run it is compared with."""
    rates = {}
    for n in sizes:
        a, b = jr.normal(jr.key(0), (n, n)), jr.normal(jr.key(1), (n, n))
        rates[n] = 2 * n**3 / min(median_seconds(jax.jit(jnp.matmul), a, b, repeats=1)[0] for _ in range(5))
    return rates


def matmul_rate() -> float:
    """The MFU reference: the best of `matmul_rates`. A median, or a single size, can read low on a noisy host, and a
    low reference flatters every MFU."""
    return max(matmul_rates().values())


def mfu_cells(count: float, seconds: float) -> str:
    """Table cells 'GFLOP per call | MFU' for a call of `count` FLOPs taking `seconds`."""
    return f"{count / 1e9:,.2f} | {count / seconds / matmul_rate():.0%}"


class CompileCounter:
    """Counts XLA compilations while active (a `jax.monitoring` listener on backend compile events)."""

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __enter__(self):
        self.count = 0
        self._listener = lambda name, *_, **__: setattr(self, "count", self.count + (name == self.EVENT))
        jax.monitoring.register_event_duration_secs_listener(self._listener)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._listener)


def header() -> list[str]:
    """The report's title and what its figures were measured on: date, commit, machine, device, versions."""
    device = jax.devices()[0]
    return ["# Benchmarks (`fsq bench`)", "",
            f"- command: `{' '.join(['fsq', 'bench', *sys.argv[2:]])}`",
            f"- date: {datetime.date.today().isoformat()}; commit: {provenance.commit()}",
            f"- machine: {provenance.machine()}",
            f"- device: {device.device_kind} ({device.platform}) x {jax.device_count()}; jax {jax.__version__}; "
            f"python {platform.python_version()}",
            f"- float32 matmul, the MFU reference: {matmul_rate() / 1e9:,.0f} GFLOP/s, the best of n = "
            + ", ".join(f"{n} ({rate / 1e9:,.0f})" for n, rate in matmul_rates().items())]


def fsq_fn(levels: tuple[int, ...]):
    """Jitted FSQ quantize + indices: the work FSQ does per latent vector."""

    @jax.jit
    def run(z):
        codes = fsq.quantize(z, levels)
        return codes, fsq.codes_to_indices(codes, levels)

    return run


def vq_fn(chunk: int = 4000):
    """Jitted VQ nearest-neighbour lookup (codes and indices) in blocks of `chunk` vectors, so that the [chunk, K]
    distance matrix stays small (chunk must divide the number of vectors)."""

    @jax.jit
    def run(z, codebook):
        blocks = z.reshape(-1, chunk, z.shape[-1])
        indices = jax.lax.map(lambda x: vq.nearest(x, codebook)[0], blocks).reshape(-1)
        return codebook[indices], indices

    return run


def same_bytes_fn():
    """The memory floor of quantize + indices: a jitted pass that reads the latents and writes codes and an int32
    index per vector, like FSQ, with trivial arithmetic in between. No quantizer can move those bytes faster."""

    @jax.jit
    def run(z):
        return z * 2.0, (z[..., 0] * 3.0).astype(jnp.int32)

    return run


def quantizers(vectors: int = 4 * 2**20, repeats: int = 5) -> list[str]:
    levels = (8, 5, 5, 5)
    z = jr.normal(jr.key(0), (vectors, len(levels)), jnp.float32)
    codebook = jr.normal(jr.key(1), (1024, len(levels)), jnp.float32)

    t_floor, _ = median_seconds(same_bytes_fn(), z, repeats=repeats)
    t_fsq, _ = median_seconds(fsq_fn(levels), z, repeats=repeats)
    t_vq, _ = median_seconds(vq_fn(chunk=4096), z, codebook, repeats=repeats)
    moved = z.nbytes * 2 + vectors * 4  # read z; write codes and int32 indices
    return ["| pass | vectors/s | bytes moved / s | share of the same-bytes floor |", "|---|---:|---:|---:|",
            f"| same bytes, trivial arithmetic (the floor), {vectors:,} vectors | {vectors / t_floor / 1e6:.1f} M | "
            f"{moved / t_floor / 1e9:.1f} GB/s | 100% |",
            f"| FSQ [8,5,5,5], quantize + indices | {vectors / t_fsq / 1e6:.1f} M | "
            f"{moved / t_fsq / 1e9:.1f} GB/s | {t_floor / t_fsq:.0%} |",
            f"| VQ, 1024 codes, D 4, nearest neighbour | {vectors / t_vq / 1e6:.2f} M | - | - |"]


def folders(files: int = 128, batch_size: int = 64, repeats: int = 3) -> list[str]:
    """Images/s of reading a folder of 400x300 JPEGs (photo-like: smooth gradients plus noise) into batches."""
    rng = np.random.default_rng(0)
    lines = ["| folder of JPEGs (400x300) | batch | one file at a time | thread pool | threads |",
             "|---|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as root:
        y, x = np.mgrid[0:300, 0:400]
        for i in range(files):
            base = np.stack([x * (i % 7 + 1) / 12, y * (i % 5 + 1) / 8, (x + y) / 3], -1) % 256
            pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(Path(root, f"{i:04d}.jpg"), quality=90)
        idx = np.arange(batch_size)
        for size in (128, 256):
            rates = {}
            for threads in (1, None):
                ds = image_files.folder(root, "all", 0, size, 3)
                ds.threads = threads or ds.threads
                seconds, _ = median_seconds(lambda: ds.get(idx)[0], repeats=repeats)
                rates[threads] = batch_size / seconds
            lines.append(f"| {size} px | {batch_size} | {rates[1]:,.0f} | {rates[None]:,.0f} | {ds.threads} |")
    return lines


def _training_row(name: str, unit: str, per_batch: int, task, batch_size: int, repeats: int = 5,
                  steps: int = 10) -> str:
    """Median rate of `steps` consecutive training steps, the data pipeline's rate, compilations while timed."""
    state = task.init_state(jr.key(0))
    batches = task.batches(0)
    put = lambda batch: jax.device_put(batch)
    step_flops = flops.count(task.step, state, put(next(batches)), jr.key(0), jnp.float32(1e-4))
    state, *_ = task.step(state, put(next(batches)), jr.key(0), jnp.float32(1e-4))  # compiles
    step_times = []
    with CompileCounter() as compiles:
        for r in range(repeats):
            prepared = [put(next(batches)) for _ in range(steps)]
            jax.block_until_ready(prepared)
            start = time.perf_counter()
            for i, batch in enumerate(prepared):
                state, stats, _ = task.step(state, batch, jr.key(r * steps + i), jnp.float32(1e-4))
            jax.block_until_ready(stats)
            step_times.append((time.perf_counter() - start) / steps)
    data_times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready([put(next(batches)) for _ in range(steps)])
        data_times.append((time.perf_counter() - start) / steps)
    step, pipeline = statistics.median(step_times), statistics.median(data_times)
    return (f"| {name} | {batch_size} | {per_batch * batch_size / step:,.0f} {unit}/s | {1 / step:.1f} | "
            f"{mfu_cells(step_flops, step)} | {1 / pipeline:,.0f} ({step / pipeline:,.0f}x the step) | "
            f"{compiles.count} |")


TRAINING_HEAD = ["| training step | batch | throughput | steps/s | GFLOP/step | MFU | data pipeline batches/s | "
                 "compilations while timed |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
GENERATION_HEAD = ["| generation | batch | images/s | GFLOP/call | MFU |", "|---|---:|---:|---:|---:|"]


def _images(n: int = 2048) -> datasets.ArrayDataset:
    try:
        return datasets.load("fashion-mnist", "test")
    except InputError:  # not installed: generated images of the same shape
        return datasets.load(f"procedural:{n}", "train", image_size=28, channels=1)


def tokenizer_area(batch_size: int = 16) -> list[str]:
    ds = _images()
    config = tokenizer.TokenizerConfig(presets.pick(presets.AUTOENCODER, "fashion-mnist"), QuantizerConfig("fsq"))
    task = tokenizer_train.AutoencoderTask(config, ds, ds, batch_size=batch_size, seed=0, weight_decay=1e-4,
                                     data_header={})
    return TRAINING_HEAD + [_training_row("tokenizer, FSQ [8,6,5], fashion-mnist preset", "images", 1, task,
                                          batch_size)]


def maskgit_area(batch_size: int = 64, generate_batch: int = 256, repeats: int = 3) -> list[str]:
    grid, n = (7, 7), 4096
    tokens = np.asarray(jr.randint(jr.key(0), (n, *grid), 0, 240), np.int32)
    labels = np.arange(n, dtype=np.int32) % 10
    config = presets.maskgit("fashion-mnist", codebook_size=240, num_classes=10, grid=grid)
    task = maskgit_train.MaskGITTask(config, tokens, labels, eval_tokens=tokens[:64], eval_labels=labels[:64],
                                     batch_size=batch_size, seed=0, weight_decay=maskgit_train.WEIGHT_DECAY, header={})
    row = _training_row("MaskGIT, fashion-mnist preset, 7x7 tokens", "tokens", 49, task, batch_size)
    model = task.init_state(jr.key(0)).model
    masked = jnp.full((generate_batch, 49), config.mask_token, jnp.int32)
    generate = lambda key: maskgit.generate(model, masked, jnp.asarray(labels[:generate_batch]), key, steps=12)  # noqa: E731
    seconds, _ = median_seconds(generate, jr.key(1), repeats=repeats)
    cells = mfu_cells(flops.count(generate, jr.key(1)), seconds)
    return TRAINING_HEAD + [row, "", *GENERATION_HEAD, f"| MaskGIT, 12 steps, one compiled call | {generate_batch} | "
                            f"{generate_batch / seconds:,.0f} | {cells} |"]


class _LMStepTask:
    """Stage II's training step on random codes: its speed does not depend on which oracle made the codes."""

    def __init__(self, task, oracle: uvim.OracleConfig, ds: dense.DenseData, batch_size: int):
        self.task, self.oracle, self.ds, self.batch_size = task, oracle, ds, batch_size
        self.codes = np.asarray(jr.randint(jr.key(0), (len(ds), oracle.grid**2), 0, oracle.quantizer.size), np.int32)
        self.step = uvim_train.make_lm_step(task, 1e-4)

    def init_state(self, key):
        return uvim_train.init_lm_state(presets.pick(presets.LM, "quick"), self.oracle, self.task, 1e-4, key=key)

    def batches(self, start_step: int):
        return datasets.step_batches(len(self.ds), self.batch_size, 0, start_step,
                                 lambda idx: {"image": self.ds.images[idx], "code": self.codes[idx]})


def uvim_area(batch_size: int = 32, decode_batch: int = 256, repeats: int = 3) -> list[str]:
    train_ds = dense.load("scenes:1024:256", "train")
    task = dense_tasks.make("depth", train_ds)
    oracle = presets.pick(presets.ORACLE, "quick")
    oracle_task = uvim_train.OracleTask(oracle, task, train_ds, train_ds, batch_size=batch_size, seed=0,
                                        weight_decay=1e-4, data_header={})
    row = _training_row("UViM oracle (stage I), depth, quick preset", "images", 1, oracle_task, batch_size)
    lm_task = _LMStepTask(task, oracle, train_ds, batch_size)
    lm_row = _training_row(f"UViM stage II, quick preset, {oracle.grid ** 2}-token codes", "images", 1, lm_task,
                           batch_size)
    lm = lm_task.init_state(jr.key(0)).model
    context = task.context(train_ds.batch(np.arange(decode_batch) % len(train_ds)))
    decode = lambda key: uvim.generate_code(lm, context, key)  # noqa: E731
    seconds, _ = median_seconds(decode, jr.key(1), repeats=repeats)
    return TRAINING_HEAD + [row, lm_row, "", *GENERATION_HEAD,
                            f"| UViM stage II, greedy, {oracle.grid ** 2} tokens, quick preset | {decode_batch} | "
                            f"{decode_batch / seconds:,.0f} | {mfu_cells(flops.count(decode, jr.key(1)), seconds)} |"]


def run(areas=AREAS, echo: Callable[[str], None] = print) -> str:
    """Measure `areas`, echo each table as it is ready, and return the whole report as Markdown."""
    parts = {"quantizers": quantizers, "folders": folders, "tokenizer": tokenizer_area, "maskgit": maskgit_area,
             "uvim": uvim_area}
    report = [*header(), ""]
    echo("\n".join(report))
    for area in areas:
        lines = [f"## {area}", "", *parts[area](), ""]
        echo("\n".join(lines))
        report += lines
    return "\n".join(report)
