"""Tokenizers with several FSQ codes per position (`--codebooks`, `--stages`): trained, encoded and decoded by the
command line like any other, and refused in one line where one index per position is needed."""

import numpy as np
import pytest
from helpers import assert_bad_input, invoke

from fsq_ref.data import datasets, tokens
from fsq_ref.layers import FSQBottleneck, ResidualFSQ
from fsq_ref.training import tokenizer_train

TINY = ["--data", "procedural:64", "--preset", "tiny", "--batch-size", 8, "--eval-every", 0]


@pytest.fixture(scope="module", params=[("--stages", ResidualFSQ), ("--codebooks", FSQBottleneck)],
                ids=["stages", "codebooks"])
def trained(request, tmp_path_factory):
    option, layer = request.param
    workdir = tmp_path_factory.mktemp("layers") / "run"
    result = invoke("train", "autoencoder", *TINY, "--levels", "5,5,4", option, 3, "--steps", 3, "--workdir", workdir)
    assert result.exit_code == 0, result.output
    assert (" 3 residual stages" if option == "--stages" else " 3 codebooks") in result.output
    return workdir, layer


def test_tokens_have_a_last_axis_and_decode_to_the_reconstructions(trained, tmp_path):
    workdir, layer = trained
    model, qstate, _ = tokenizer_train.load(workdir)
    assert isinstance(model.quantizer, layer)
    assert invoke("encode", "--workdir", workdir, "--split", "test", "--out", tmp_path / "t.npz").exit_code == 0
    token_file = tokens.load(tmp_path / "t.npz")
    assert token_file.indices.shape == (64, 7, 7, 3) and token_file.codebook_size == 100
    assert 0 <= token_file.indices.min() and token_file.indices.max() < 100
    assert invoke("decode", "--workdir", workdir, "--tokens", tmp_path / "t.npz", "--out", tmp_path / "d.npz"
                  ).exit_code == 0
    with np.load(tmp_path / "d.npz") as f:
        decoded = f["images"]
    images = datasets.load("procedural:64", "test").get(np.arange(64))[0]
    recon = tokenizer_train.reconstruct_all(model, qstate, images)
    np.testing.assert_array_equal(decoded, recon.reshape(decoded.shape))  # the file keeps one grey channel as [H, W]


def test_maskgit_refuses_several_indices_per_position(trained, tmp_path):
    workdir, _ = trained
    assert invoke("encode", "--workdir", workdir, "--split", "train", "--out", tmp_path / "t.npz").exit_code == 0
    assert_bad_input(invoke("train", "maskgit", "--tokens", tmp_path / "t.npz", "--preset", "tiny", "--steps", 1,
                            "--workdir", tmp_path / "mg"), "MaskGIT models one")


@pytest.mark.parametrize("args, message", [
    (["--stages", 2, "--codebooks", 2], "not both above 1"),
    (["--quantizer", "vq", "--stages", 2], "are for FSQ"),
    (["--levels", "2,5", "--stages", 2], "every level >= 3"),
    (["--codebooks", 0], "each >= 1"),
])
def test_bad_combinations_are_one_line(args, message, tmp_path):
    assert_bad_input(invoke("train", "autoencoder", *TINY, *args, "--steps", 1, "--workdir", tmp_path / "w"), message)
    assert not (tmp_path / "w" / "checkpoint.fsq").exists()
