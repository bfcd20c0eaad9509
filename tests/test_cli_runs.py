"""The command line never computes a quiet wrong answer: defaults come from the run, splits say what they are, bad
options are refused in one line, logs show progress, one run per folder, and run folders describe themselves."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import fsq_ref
from fsq_ref import fsq, quantizers, runlock
from fsq_ref.errors import InputError
from test_cli import assert_bad_input, invoke

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
    q = quantizers.from_options("fsq", codebook_size=4096, default_levels=(7, 5, 5, 5, 5))
    assert q.levels == fsq.levels_for(4096) and q.size == 4375
    with pytest.raises(InputError, match="give one of the two"):
        quantizers.from_options("fsq", levels=(8, 6, 5), codebook_size=1000)


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
    from fsq_ref import runs, tokenizer, tokens

    model, qstate, header = tokenizer.load(trained)
    ds = runs.image_data(header, None, None, "all")
    made = tokenizer.encode_dataset(model, qstate, header["sha256"], ds, batch_size=16)
    assert invoke("encode", "--workdir", trained, "--out", tmp_path / "t.npz").exit_code == 0
    np.testing.assert_array_equal(made.indices, tokens.load(tmp_path / "t.npz").indices)
    images = tokenizer.decode_all(model, qstate, made.indices, batch_size=16)
    assert images.shape == (FOLDER_IMAGES, 28, 28, 1) and images.dtype == np.uint8
    result, spec, count = runs.evaluate(trained)
    assert spec == str(photos) and count == FOLDER_IMAGES // 10 and 0 < result["usage"] <= 1
