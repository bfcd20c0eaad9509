"""The `fsq` command line end to end, on the tiny preset and procedural data."""

import json
import os
import shutil
import signal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_bad_input, invoke
from PIL import Image

from fsq_ref import tokenizer
from fsq_ref.data import datasets
from fsq_ref.evaluation import features
from fsq_ref.training import maskgit_train, tokenizer_train

TINY = ["--data", "procedural:64", "--preset", "tiny", "--batch-size", "16"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("fsq")
    result = invoke("train", "autoencoder", *TINY, "--levels", "5,5,5", "--steps", 8, "--workdir", workdir)
    assert result.exit_code == 0, result.output
    return workdir


@pytest.mark.parametrize(
    "command",
    [[], ["train"], ["train", "autoencoder"], ["train", "maskgit"], ["encode"], ["decode"], ["eval"], ["generate"],
     ["eval-samples"], ["study"], ["study", "codebook-size"]],
)
def test_help(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0 and "Usage" in result.output
    if command and command not in (["train"], ["study"]):
        assert "Example" in result.output


def test_train_writes_checkpoint_metrics_and_picture(trained):
    assert (trained / "checkpoint.fsq").is_file()
    records = [json.loads(line) for line in open(trained / "metrics.jsonl")]
    assert records[-1]["split"] == "eval" and 0 < records[-1]["usage"] <= 1 and records[-1]["psnr"] > 0
    assert Image.open(trained / "reconstructions.png").size[0] > 28


def test_encode_then_decode_gives_the_models_own_reconstruction(trained, tmp_path):
    result = invoke("encode", "--workdir", trained, "--data", "procedural:64", "--split", "test",
                    "--out", tmp_path / "tokens.npz")
    assert result.exit_code == 0, result.output
    tokens = np.load(tmp_path / "tokens.npz")
    assert tokens["indices"].shape == (64, 7, 7) and tokens["indices"].dtype == np.int32
    assert tokens["labels"].shape == (64,) and list(tokens["levels"]) == [5, 5, 5] and tokens["codebook_size"] == 125

    result = invoke("decode", "--workdir", trained, "--tokens", tmp_path / "tokens.npz", "--out", tmp_path / "img.npz")
    assert result.exit_code == 0, result.output
    decoded = np.load(tmp_path / "img.npz")["images"]
    assert decoded.shape == (64, 28, 28) and decoded.dtype == np.uint8
    assert (tmp_path / "img.png").is_file() and str(tmp_path / "img.png") in result.output

    model, qstate, _ = tokenizer_train.load(trained)
    images, _ = datasets.load("procedural:64", "test").get(np.arange(64))
    recon, indices, _, _ = tokenizer.reconstruct(model, qstate, images)
    np.testing.assert_array_equal(tokens["indices"], indices)
    np.testing.assert_array_equal(decoded, np.asarray(recon)[..., 0])


def test_eval_prints_and_writes_metrics(trained, tmp_path):
    result = invoke("eval", "--workdir", trained, "--data", "procedural:64", "--out", tmp_path / "e.json")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "e.json").read_text())
    assert {"l1", "mse", "psnr", "usage", "perplexity", "entropy_bits"} <= set(metrics)
    assert (metrics["data"], metrics["split"], metrics["examples"], metrics["step"]) == ("procedural:64", "test", 64, 8)
    assert f"psnr {metrics['psnr']:.4g}" in result.output and f"wrote {tmp_path / 'e.json'}" in result.output


def test_stored_images_of_another_shape_are_refused_and_folders_are_fitted(trained, tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "rgb.npz", images=rgb)
    result = invoke("encode", "--workdir", trained, "--data", tmp_path / "rgb.npz", "--out", tmp_path / "t.npz")
    assert_bad_input(result, "are 32x32x3 but this tokenizer takes 28x28x1")
    assert not (tmp_path / "t.npz").exists()
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, image in enumerate(rgb[:5]):
        Image.fromarray(image).save(folder / f"{i}.png")
    result = invoke("encode", "--workdir", trained, "--data", folder, "--out", tmp_path / "t.npz")
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "t.npz")["indices"].shape == (5, 7, 7)  # every file: the default split is "all"


# vq-entropy differs from vq by one loss term (tested in test_vq); it runs with -m slow.
@pytest.mark.parametrize("quantizer", ["vq", pytest.param("vq-entropy", marks=pytest.mark.slow), "vq-split"])
def test_vq_tokenizers_train_and_encode(quantizer, tmp_path):
    result = invoke("train", "autoencoder", *TINY, "--quantizer", quantizer, "--codebook-size", 32, "--steps", 3,
                    "--workdir", tmp_path)
    assert result.exit_code == 0, result.output
    result = invoke("encode", "--workdir", tmp_path, "--data", "procedural:64", "--out", tmp_path / "t.npz")
    assert result.exit_code == 0, result.output
    indices = np.load(tmp_path / "t.npz")["indices"]
    assert indices.min() >= 0 and indices.max() < 32


def test_resume_after_ctrl_c_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    args = ["train", "autoencoder", *TINY, "--quantizer", "vq-split", "--codebook-size", 32, "--steps", 6]
    assert invoke(*args, "--workdir", tmp_path / "straight").exit_code == 0

    real, calls = datasets.batch_indices, []

    def ctrl_c_during_third_batch(*a, **k):
        calls.append(a)
        if len(calls) == 3 + datasets.PREFETCH:  # the batches of the next PREFETCH steps are drawn ahead
            os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **k)

    monkeypatch.setattr(datasets, "batch_indices", ctrl_c_during_third_batch)
    result = invoke(*args, "--workdir", tmp_path / "resumed")
    assert result.exit_code == 130 and "--resume" in result.output
    monkeypatch.undo()
    assert tokenizer_train.load(tmp_path / "resumed")[2]["step"] == 3
    assert invoke(*args, "--workdir", tmp_path / "resumed", "--resume").exit_code == 0

    straight, resumed = tokenizer_train.load(tmp_path / "straight"), tokenizer_train.load(tmp_path / "resumed")
    assert resumed[2]["step"] == 6
    for a, b in zip(jax.tree.leaves(straight[:2]), jax.tree.leaves(resumed[:2])):
        np.testing.assert_array_equal(a, b)


def test_bad_levels(tmp_path):
    assert_bad_input(invoke("train", "autoencoder", *TINY, "--levels", "8,1,5", "--steps", 1, "--workdir", tmp_path),
                     ">= 2")
    assert_bad_input(invoke("train", "autoencoder", *TINY, "--levels", "8,x", "--steps", 1, "--workdir", tmp_path),
                     "commas")
    assert_bad_input(invoke("train", "autoencoder", *TINY, "--steps", 1, "--codebook-size", 1000, "--workdir",
                            tmp_path), "levels for")


def test_negative_eval_every_is_refused_before_anything_is_written(tmp_path):
    assert_bad_input(invoke("train", "autoencoder", *TINY, "--steps", 1, "--eval-every", -1, "--workdir",
                            tmp_path / "run"), "--eval-every must be >= 0")
    assert not (tmp_path / "run").exists()


def test_missing_dataset_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    monkeypatch.delenv("FSQ_DATA_DIR", raising=False)
    assert_bad_input(invoke("train", "autoencoder", "--steps", 1, "--workdir", tmp_path / "w"), "apt-get install")


def test_unreadable_image_is_named(trained, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(folder / "good.png")
    (folder / "broken.png").write_bytes(b"not a png")
    assert_bad_input(invoke("eval", "--workdir", trained, "--data", folder, "--split", "all"), "broken.png")


def test_a_tokenizer_is_not_sampled(trained):
    assert_bad_input(invoke("eval", "--workdir", trained, "--temperature", 1), "a tokenizer samples nothing")


def test_missing_or_corrupt_checkpoint(trained, tmp_path):
    assert_bad_input(invoke("eval", "--workdir", tmp_path, "--data", "procedural:64"), "no checkpoint")
    shutil.copytree(trained, tmp_path / "copy")
    path = tmp_path / "copy" / "checkpoint.fsq"
    path.write_bytes(path.read_bytes()[:-100])
    assert_bad_input(invoke("eval", "--workdir", tmp_path / "copy", "--data", "procedural:64"), "truncated or corrupt")
    path.write_bytes(b"hello")
    assert_bad_input(invoke("eval", "--workdir", tmp_path / "copy", "--data", "procedural:64"), "not an fsq-ref")


def test_bad_token_files(trained, tmp_path):
    sha = tokenizer_train.load(trained)[2]["sha256"]
    cases = {
        "outside": dict(indices=np.full((2, 7, 7), 125, np.int32), tokenizer=sha, codebook_size=125),
        "grids": dict(indices=np.zeros((2, 8, 8), np.int32), tokenizer=sha, codebook_size=125),
        "another tokenizer": dict(indices=np.zeros((2, 7, 7), np.int32), tokenizer="0" * 64, codebook_size=125),
        "lacks": dict(indices=np.zeros((2, 7, 7), np.int32)),
    }
    for message, arrays in cases.items():
        np.savez(tmp_path / "t.npz", **arrays)
        assert_bad_input(invoke("decode", "--workdir", trained, "--tokens", tmp_path / "t.npz", "--out",
                                tmp_path / "o.npz"), message)
    assert not (tmp_path / "o.npz").exists()


def test_existing_run_is_not_overwritten(trained):
    assert_bad_input(invoke("train", "autoencoder", *TINY, "--levels", "5,5,5", "--steps", 8, "--workdir", trained),
                     "--resume")


@pytest.fixture(scope="module")
def maskgit_run(trained, tmp_path_factory):
    folder = tmp_path_factory.mktemp("maskgit")
    for split in ("train", "test"):
        result = invoke("encode", "--workdir", trained, "--data", "procedural:64", "--split", split,
                        "--out", folder / f"tokens-{split}.npz")
        assert result.exit_code == 0, result.output
    result = invoke("train", "maskgit", "--tokens", folder / "tokens-train.npz", "--eval-tokens",
                    folder / "tokens-test.npz", "--preset", "tiny", "--steps", 3, "--batch-size", 16,
                    "--workdir", folder / "mg")
    assert result.exit_code == 0, result.output
    return folder


def test_generate_class_rows_and_unconditional(trained, maskgit_run, tmp_path):
    out = tmp_path / "s.npz"
    result = invoke("generate", "--workdir", maskgit_run / "mg", "--autoencoder", trained, "--num-per-class", 2,
                    "--labels", "0,3", "--steps", 4, "--guidance", 1.0, "--out", out)
    assert result.exit_code == 0, result.output
    samples = np.load(out)
    assert samples["images"].shape == (4, 28, 28) and samples["images"].dtype == np.uint8
    assert list(samples["labels"]) == [0, 0, 3, 3] and samples["indices"].shape == (4, 7, 7)
    assert samples["indices"].min() >= 0 and samples["indices"].max() < 125
    assert (tmp_path / "s.png").is_file()
    # The sampled tokens decode to exactly the images written.
    model, qstate, _ = tokenizer_train.load(trained)
    np.testing.assert_array_equal(np.asarray(tokenizer.decode(model, qstate, samples["indices"]))[..., 0],
                                  samples["images"])

    result = invoke("generate", "--workdir", maskgit_run / "mg", "--autoencoder", trained, "--num-per-class", 3,
                    "--unconditional", "--steps", 4, "--out", tmp_path / "u.npz")
    assert result.exit_code == 0, result.output
    assert list(np.load(tmp_path / "u.npz")["labels"]) == [-1, -1, -1]


def test_eval_samples_reports_quality_against_reconstructions(trained, maskgit_run, tmp_path, monkeypatch):
    monkeypatch.setenv("FSQ_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(features, "TRAIN_STEPS", 20)
    out = tmp_path / "s.npz"
    assert invoke("generate", "--workdir", maskgit_run / "mg", "--autoencoder", trained, "--num-per-class", 4,
                  "--steps", 4, "--out", out).exit_code == 0
    result = invoke("eval-samples", "--samples", out, "--data", "procedural:64", "--autoencoder", trained)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "s.quality.json").read_text())
    for name in ("samples", "reconstructions"):
        assert {"frechet_distance", "precision", "recall", "label_accuracy"} <= set(report[name])
        assert 0 <= report[name]["label_accuracy"] <= 1 and report[name]["frechet_distance"] >= 0
    assert "| samples (40) |" in result.output
    ratio = report["samples"]["frechet_distance"] / report["reconstructions"]["frechet_distance"]
    assert f"Frechet distance is {ratio:.2f}x the reconstructions'" in result.output


def test_generate_bad_input(trained, maskgit_run, tmp_path):
    args = ["generate", "--workdir", maskgit_run / "mg", "--out", tmp_path / "s.npz"]
    assert_bad_input(invoke(*args, "--autoencoder", trained, "--labels", "0,12"), "outside the model's classes")
    assert_bad_input(invoke(*args, "--autoencoder", tmp_path), "no checkpoint")
    # A tokenizer other than the one whose tokens MaskGIT learned.
    other = tmp_path / "other"
    assert invoke("train", "autoencoder", *TINY, "--levels", "5,5,5", "--steps", 1, "--seed", 1,
                  "--workdir", other).exit_code == 0
    assert_bad_input(invoke(*args, "--autoencoder", other), "another tokenizer")
    assert_bad_input(invoke("generate", "--workdir", trained, "--autoencoder", trained, "--out", tmp_path / "x.npz"),
                     "not 'maskgit'")
    assert not (tmp_path / "s.npz").exists()


def test_eval_of_a_maskgit_run_says_how_to_measure_one(maskgit_run):
    result = invoke("eval", "--workdir", maskgit_run / "mg")
    assert_bad_input(result, "is a MaskGIT run, which `fsq eval` does not measure")
    assert "`fsq generate --workdir" in result.stderr
    assert "then score the samples with `fsq eval-samples" in result.stderr
    assert not list((maskgit_run / "mg").glob("eval-*.json"))


def test_maskgit_refuses_mismatched_eval_tokens(maskgit_run, tmp_path):
    np.savez(tmp_path / "t.npz", indices=np.zeros((4, 7, 7), np.int32), codebook_size=125, tokenizer="f" * 64)
    assert_bad_input(invoke("train", "maskgit", "--tokens", maskgit_run / "tokens-train.npz", "--eval-tokens",
                            tmp_path / "t.npz", "--steps", 1, "--workdir", tmp_path / "mg"), "another tokenizer")


def test_trainers_take_bfloat16_and_resume_only_in_the_same_dtype(maskgit_run, tmp_path):
    # The fixtures' settings but --dtype bfloat16, so that only the training steps compile anew.
    runs = {
        "ae": ["train", "autoencoder", *TINY, "--levels", "5,5,5", "--steps", 2],
        "mg": ["train", "maskgit", "--tokens", maskgit_run / "tokens-train.npz", "--eval-tokens",
               maskgit_run / "tokens-test.npz", "--preset", "tiny", "--steps", 2, "--batch-size", 16],
    }
    for name, args in runs.items():
        result = invoke(*args, "--dtype", "bfloat16", "--workdir", tmp_path / name)
        assert result.exit_code == 0, result.output
        assert_bad_input(invoke(*args, "--dtype", "float32", "--workdir", tmp_path / name, "--resume"),
                         "other settings")
    # The checkpoints hold float32 parameters and optimiser state (loading checks every leaf's dtype).
    model, _, header = tokenizer_train.load(tmp_path / "ae")
    assert header["loop"]["dtype"] == "bfloat16"
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array)))
    assert maskgit_train.load(tmp_path / "mg")[1]["loop"]["dtype"] == "bfloat16"
