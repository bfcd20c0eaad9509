"""The command line never computes a quiet wrong answer: defaults come from the run, splits say what they are, bad
options are refused in one line, logs show progress, one run per folder, and run folders describe themselves; runs
fine-tune from other runs, export their weights for use without fsq-ref, and log to TensorBoard."""

import json
import os
import re
import struct
import subprocess
import sys
from types import SimpleNamespace

import equinox as eqx
import jax
import jax.random as jr
import numpy as np
import pytest
from helpers import assert_bad_input, invoke, python_blocks
from PIL import Image

import fsq_ref
from fsq_ref import fsq, quantizer_config, tokenizer
from fsq_ref.common.errors import InputError
from fsq_ref.training import checkpoint, export, finetune, presets, runlock, tokenizer_train

FOLDER_IMAGES = 40


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A user's folder of 40 unlabelled 20x24 RGB images, no train/test subfolders."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(FOLDER_IMAGES):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return folder


@pytest.fixture(scope="module")
def trained(photos, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    result = invoke("train", "autoencoder", "--data", photos, "--preset", "tiny", "--levels", "5,5,5", "--steps", 4,
                    "--batch-size", 4, "--workdir", workdir)
    assert result.exit_code == 0, result.output
    return workdir


def test_encode_defaults_to_the_data_of_the_run_and_all_of_it(trained, photos, tmp_path):
    result = invoke("encode", "--workdir", trained, "--out", tmp_path / "t.npz")
    assert result.exit_code == 0, result.output
    assert f"encoding {FOLDER_IMAGES} images (all split of {photos})" in result.output
    assert np.load(tmp_path / "t.npz")["indices"].shape == (FOLDER_IMAGES, 7, 7)


def test_the_test_split_of_a_folder_is_its_held_out_tenth(trained, photos, tmp_path):
    result = invoke("encode", "--workdir", trained, "--split", "test", "--out", tmp_path / "t.npz")
    assert result.exit_code == 0, result.output
    assert f"encoding {FOLDER_IMAGES // 10} images (test split of {photos})" in result.output
    result = invoke("eval", "--workdir", trained, "--out", tmp_path / "e.json")
    assert result.exit_code == 0, result.output
    assert f"{FOLDER_IMAGES // 10} examples (test split of {photos})" in result.output


def test_progress_is_one_line_per_logging_interval_when_not_a_terminal(tmp_path):
    result = invoke("train", "autoencoder", "--data", "procedural:64", "--preset", "tiny", "--levels", "5,5,5",
                    "--steps", 50, "--batch-size", 4, "--workdir", tmp_path)
    assert result.exit_code == 0, result.output
    lines = re.findall(r"^training autoencoder: step (\d+)/50  loss \S+  psnr \S+  usage [\d.]+%  [\d.]+ steps/s"
                       r"  eta \S+$", result.output, re.MULTILINE)
    assert lines == ["25", "50"] and "\r" not in result.output


@pytest.mark.parametrize("args, message", [
    (["encode", "--workdir", "W", "--data-dir", "/nowhere/at/all", "--out", "t.npz"], "is not a folder"),
    (["train", "autoencoder", "--preset", "huge", "--steps", 1, "--workdir", "W"], "'huge' is not one of"),
    (["encode", "--workdir", "W", "--split", "validation", "--out", "t.npz"], "'validation' is not one of"),
    (["study", "codebook-size", "--quantizers", "fsq,pq", "--workdir", "S"], "unknown --quantizers pq"),
    (["bench", "--areas", "gpu"], "unknown --areas gpu"),
    # FSQ's --codebook-size in UViM's stage I picks the paper's levels; 1000 has none, so it is refused, not ignored.
    (["train", "uvim-oracle", "--task", "depth", "--codebook-size", 1000, "--steps", 1, "--workdir", "W"],
     "no recommended levels for codebook size 1000"),
])
def test_options_are_checked_never_ignored(args, message, trained, tmp_path):
    args = [trained if a == "W" else tmp_path / "study" if a == "S" else tmp_path / a if a == "t.npz" else a
            for a in args]
    assert_bad_input(invoke(*args), message)


def test_fsq_codebook_size_picks_the_papers_levels():
    q = quantizer_config.from_options("fsq", codebook_size=4096, default_levels=(7, 5, 5, 5, 5))
    assert q.levels == fsq.levels_for(4096) and q.size == 4375
    with pytest.raises(InputError, match="give one of the two"):
        quantizer_config.from_options("fsq", levels=(8, 6, 5), codebook_size=1000)


def test_generate_guidance_default_is_the_documented_one():
    result = invoke("generate", "--help")
    assert re.search(r"--guidance FLOAT\s+classifier-free guidance.*\[default:\s+1\.0\]", result.output, re.DOTALL)


def test_a_folder_in_use_is_refused_and_a_stale_lock_taken_over(tmp_path):
    args = ["train", "autoencoder", "--data", "procedural:64", "--preset", "tiny", "--steps", 2, "--batch-size", 4,
            "--workdir", tmp_path]
    (tmp_path / runlock.LOCK).write_text(f'{{"pid": {os.getpid()}, "host": "{os.uname().nodename}"}}')
    assert_bad_input(invoke(*args), f"is in use by a run (pid {os.getpid()}")
    assert not (tmp_path / "checkpoint.fsq").exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / runlock.LOCK).write_text(f'{{"pid": {int(dead.stdout)}, "host": "{os.uname().nodename}"}}')
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "checkpoint.fsq").exists() and not (tmp_path / runlock.LOCK).exists()


def test_version_and_info(trained, photos):
    result = invoke("--version")
    assert result.exit_code == 0 and fsq_ref.__version__ in result.output and fsq_ref.__version__ != "0+unknown"
    result = invoke("info", trained)
    assert result.exit_code == 0, result.output
    info = dict(re.findall(r"^\s*([a-z0-9 ]+): (.*)$", result.output, re.MULTILINE))
    assert info["kind"] == "autoencoder" and info["made by"] == "fsq train autoencoder"
    assert info["step"] == "4 of 4" and info["data"] == str(photos)
    assert info["quantizer"] == "fsq, levels [5, 5, 5] (125 codes)"
    assert re.search(r"psnr \d", info["last evaluation"]) and "usage" in info["last evaluation"]
    assert_bad_input(invoke("info", trained / "nothing-here"), "no checkpoint")


def test_package_surface():
    from fsq_ref import FSQ, VQ, codes_to_indices, indices_to_codes, levels_for, quantize  # noqa: F401

    assert fsq_ref.quantize is fsq.quantize and fsq_ref.levels_for(2**10) == (8, 5, 5, 5)
    assert os.path.isfile(os.path.join(os.path.dirname(fsq_ref.__file__), "py.typed"))


def test_each_command_is_one_library_call_from_python(trained, photos, tmp_path):
    """What `fsq encode`, `decode` and `eval` print and write, the library gives a Python caller directly."""
    from fsq_ref.data import tokens
    from fsq_ref.evaluation import runs
    from fsq_ref.training import tokenizer_train

    model, qstate, header = tokenizer_train.load(trained)
    ds = runs.image_data(header, None, None, "all")
    made = tokenizer_train.encode_dataset(model, qstate, header["sha256"], ds, batch_size=16)
    assert invoke("encode", "--workdir", trained, "--out", tmp_path / "t.npz").exit_code == 0
    np.testing.assert_array_equal(made.indices, tokens.load(tmp_path / "t.npz").indices)
    images = tokenizer_train.decode_all(model, qstate, made.indices, batch_size=16)
    assert images.shape == (FOLDER_IMAGES, 28, 28, 1) and images.dtype == np.uint8
    evaluation = runs.evaluate(trained)
    assert evaluation.data == str(photos) and evaluation.examples == FOLDER_IMAGES // 10
    assert 0 < evaluation.results["usage"] <= 1
    # `fsq eval`'s file too: written by the library, beside the run unless told otherwise.
    again, path = runs.evaluate_to_file(trained, tmp_path / "e.json")
    assert path == tmp_path / "e.json" and again.results == pytest.approx(evaluation.results)
    assert json.loads(path.read_text()) == pytest.approx({"data": str(photos), "split": "test",
                                                          "examples": FOLDER_IMAGES // 10, "step": 4,
                                                          **evaluation.results})
    assert runs.evaluation_file(trained) == trained / "eval-test.json"


def _tensorboard_tags(folder) -> set[str]:
    """The tags of every summary in a TensorBoard folder, read with tensorboardX's protobuf alone."""
    from tensorboardX.proto import event_pb2

    tags = set()
    for path in folder.glob("events.out.tfevents.*"):
        data, at = path.read_bytes(), 0
        while at < len(data):  # records: length (8 bytes), its CRC (4), the event, its CRC (4)
            (length,) = struct.unpack("<Q", data[at:at + 8])
            tags |= {v.tag for v in event_pb2.Event.FromString(data[at + 12:at + 12 + length]).summary.value}
            at += 16 + length
    return tags


def test_fine_tuning_starts_from_the_weights_with_a_fresh_optimiser(trained, tmp_path):
    pytest.importorskip("tensorboardX")
    workdir = tmp_path / "fine-tuned"
    # Learning rate 0: the weights must come out exactly as they went in, whatever the new data.
    result = invoke("train", "autoencoder", "--data", "procedural:64", "--preset", "tiny", "--levels", "5,5,5",
                    "--steps", 2, "--batch-size", 4, "--learning-rate", 0, "--init-from", trained, "--tensorboard",
                    "--workdir", workdir)
    assert result.exit_code == 0, result.output
    assert f"starting from the model of {trained} (step 4)" in result.output
    before, after = export.trained_arrays(trained)[0], export.trained_arrays(workdir)[0]
    assert before.keys() == after.keys()
    for name in before:
        np.testing.assert_array_equal(before[name], after[name], err_msg=name)

    def init(header, key):
        return tokenizer_train.init_train_state(tokenizer.TokenizerConfig.from_dict(header["task"]["tokenizer"]), 1e-4,
                                          key=key)

    header, state = checkpoint.load_run(workdir, "autoencoder", init)
    assert int(state.opt_state[0].count) == 2 and header["step"] == 2  # a new schedule, a new optimiser
    origin = checkpoint.read_run(trained)
    assert header["init_from"] == {"workdir": str(trained.resolve()), "step": 4, "sha256": origin["sha256"]}
    assert header["task"]["data"]["spec"] == "procedural:64"
    info = invoke("info", workdir).output
    assert f"started from: {trained.resolve()} (step 4, checkpoint {origin['sha256'][:12]})" in info
    assert {"train/loss", "train/usage", "eval/psnr", "reconstructions"} <= _tensorboard_tags(workdir / "tensorboard")
    assert_bad_input(invoke("train", "autoencoder", "--data", "procedural:64", "--preset", "tiny", "--levels", "5,5,5",
                            "--steps", 3, "--batch-size", 4, "--learning-rate", 0, "--init-from", tmp_path / "other",
                            "--resume", "--workdir", workdir), "resume without --init-from")


def test_fine_tuning_refuses_another_codebook_network_or_kind(trained, tmp_path):
    args = ["train", "autoencoder", "--data", "procedural:64", "--preset", "tiny", "--steps", 1, "--batch-size", 4,
            "--init-from", trained, "--workdir", tmp_path / "w"]
    assert_bad_input(invoke(*args, "--levels", "8,6,5"), "has tokenizer.quantizer.levels [5, 5, 5], this run [8, 6, 5]")
    assert_bad_input(invoke(*args, "--quantizer", "vq"), "has tokenizer.quantizer.kind fsq, this run vq")
    assert_bad_input(invoke(*args[:5], "fashion-mnist-14x14", *args[6:], "--levels", "5,5,5"),
                     "has tokenizer.autoencoder.base_filters 8, this run 16")
    assert not (tmp_path / "w" / "checkpoint.fsq").exists()
    task = SimpleNamespace(kind="maskgit", header={})
    with pytest.raises(InputError, match="holds a run of kind 'autoencoder', not 'maskgit'"):
        finetune.start_from(task, trained, lambda: None)


def test_fine_tuning_carries_the_vq_dictionary_over(tmp_path):
    """The EMA dictionary and its counts are part of the model; only the optimiser starts afresh."""
    config = tokenizer.TokenizerConfig(presets.AUTOENCODER["tiny"], quantizer_config.QuantizerConfig("vq-split",
                                                                                              codebook_size=16))
    task = tokenizer_train.make_task(config, "procedural:64", None, batch_size=4, seed=0, weight_decay=1e-4)
    fresh = task.init_state(jr.key(0))
    trained_state = jax.tree.map(lambda x: x + 1 if eqx.is_inexact_array(x) else x, task.init_state(jr.key(1)))
    checkpoint.save(tmp_path / checkpoint.CHECKPOINT, {"kind": "autoencoder", "task": task.header, "step": 7},
                    trained_state)
    state, origin = finetune.start_from(task, tmp_path, lambda: fresh)
    for got, want in [(state.model, trained_state.model), (state.qstate, trained_state.qstate),
                      (state.opt_state, fresh.opt_state)]:
        for a, b in zip(jax.tree.leaves(eqx.filter(got, eqx.is_array)), jax.tree.leaves(eqx.filter(want, eqx.is_array))):
            np.testing.assert_array_equal(a, b)
    assert origin["step"] == 7


def _numpy_encoder(w: dict, autoencoder: dict, x: np.ndarray) -> np.ndarray:
    """The tokenizer's encoder from an export's flat arrays alone (NumPy, and jax.lax for the convolutions):
    image [H, W, C] in [-1, 1] -> latents [h, w, D]."""
    def conv(name, x):
        kernel = w[f"{name}.weight"]
        pad = kernel.shape[-1] // 2
        return np.asarray(jax.lax.conv_general_dilated(x[None], kernel, (1, 1), [(pad, pad)] * 2))[0] + w[f"{name}.bias"]

    def norm(name, x):  # GroupNorm: groups = the largest divisor of the channels up to 32, eps 1e-5
        groups = max(g for g in range(1, min(32, len(x)) + 1) if len(x) % g == 0)
        g = x.reshape(groups, -1)
        g = (g - g.mean(1, keepdims=True)) / np.sqrt(g.var(1, keepdims=True) + 1e-5)
        return g.reshape(x.shape) * w[f"{name}.weight"][:, None, None] + w[f"{name}.bias"][:, None, None]

    def swish(x):
        return x / (1 + np.exp(-x))

    def block(name, x):
        y = conv(f"{name}.conv1", swish(norm(f"{name}.norm1", x)))
        y = conv(f"{name}.conv2", swish(norm(f"{name}.norm2", y)))
        return y + (conv(f"{name}.skip", x) if f"{name}.skip.weight" in w else x)

    e, blocks = "autoencoder.encoder", range(autoencoder["num_res_blocks"])
    x = conv(f"{e}.stem", np.moveaxis(x, -1, 0))
    for i in range(len(autoencoder["channel_multipliers"])):
        if i:  # 2x2 average pooling
            c, h, wd = x.shape
            x = x.reshape(c, h // 2, 2, wd // 2, 2).mean(axis=(2, 4))
        for j in blocks:
            x = block(f"{e}.levels.{i}.{j}", x)
    for j in blocks:
        x = block(f"{e}.bottom.{j}", x)
    return np.moveaxis(conv(f"{e}.head", swish(norm(f"{e}.norm", x))), 0, -1)


@pytest.mark.parametrize("fmt", ["safetensors", "npz"])
def test_an_export_reproduces_the_encoder_without_fsq_ref(fmt, trained, tmp_path, monkeypatch):
    out = tmp_path / "runs" / f"fsq.{fmt}"
    result = invoke("export", trained, "--format", fmt, "--out", out)
    assert result.exit_code == 0, result.output
    if fmt == "safetensors":
        from safetensors import safe_open

        with safe_open(str(out), "np") as f:
            meta, arrays = json.loads(f.metadata()["fsq_ref"]), {k: f.get_tensor(k) for k in f.keys()}
        monkeypatch.chdir(tmp_path)  # the README's reading example, on this file
        (block,) = python_blocks("safe_open")
        exec(block, {})
    else:
        with np.load(out, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files if k != "__metadata__"}
            meta = json.loads(str(f["__metadata__"]))
    assert meta["kind"] == "autoencoder" and meta["step"] == 4 and meta["format"] == export.FORMAT
    assert meta["config"]["tokenizer"]["quantizer"]["levels"] == [5, 5, 5]
    model, _, _ = tokenizer_train.load(trained)
    x = np.asarray(jr.uniform(jr.key(0), (28, 28, 1), minval=-1, maxval=1))
    np.testing.assert_allclose(_numpy_encoder(arrays, meta["config"]["tokenizer"]["autoencoder"], x),
                               model.autoencoder.encode(x), atol=2e-4, rtol=1e-4)
    assert not list(out.parent.glob(".*.tmp"))  # written atomically: no temporary file left


def test_tensorboard_without_its_extra_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # as if not installed: importing it fails
    assert_bad_input(invoke("train", "autoencoder", "--data", "procedural:64", "--preset", "tiny", "--steps", 1,
                            "--batch-size", 4, "--tensorboard", "--workdir", tmp_path / "w"),
                     "pip install '.[tensorboard]'")
    assert not (tmp_path / "w" / "checkpoint.fsq").exists()
