"""Run folders written by an earlier version still load and measure the same.

tests/data/pre-layout holds tiny run folders of every kind (an FSQ and a VQ-split tokenizer, MaskGIT on the FSQ
tokenizer's tokens, a UViM depth oracle and its stage II), trained for two steps by the commit named in
WRITTEN_BY_COMMIT, before the package moved into subpackages, with what that code measured on them in
expected-eval.json. A checkpoint stores arrays and a JSON header, never module paths, so moving code must not break it;
this test keeps that true.
"""

import json
import shutil
from pathlib import Path

import jax.random as jr
import numpy as np
import pytest

from fsq_ref import dense_tasks
from fsq_ref.common.errors import InputError
from fsq_ref.data import dense, tokens
from fsq_ref.evaluation import runs, uvim_eval
from fsq_ref.tokenizer import TokenizerConfig
from fsq_ref.training import checkpoint, maskgit_train, uvim_train
from fsq_ref.uvim import OracleConfig

FOLDERS = Path(__file__).parent / "data" / "pre-layout"


def expected(name: str) -> dict:
    return json.loads((FOLDERS / name / "expected-eval.json").read_text())


def assert_close(measured: dict, recorded: dict) -> None:
    for key, value in recorded.items():
        if isinstance(value, dict):
            assert_close(measured[key], value)
        elif isinstance(value, float):
            assert measured[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


@pytest.fixture
def folders(tmp_path):
    """A copy, so that nothing a load might write lands in the repository."""
    return Path(shutil.copytree(FOLDERS, tmp_path / "pre-layout"))


@pytest.mark.parametrize("name", ["autoencoder-fsq", "autoencoder-vq", "uvim-oracle"])
def test_tokenizers_and_oracle_measure_as_when_written(folders, name):
    recorded = expected(name)
    results = runs.evaluate(folders / name, split=recorded["split"])[0]
    assert_close(results, {k: v for k, v in recorded.items() if k not in ("data", "split", "examples", "step")})


def test_stage_two_measures_as_when_written(folders):
    # Its header names the oracle by the absolute path it had when written; the loader takes another.
    lm, oracle, qstate, task, header = uvim_train.load_lm(folders / "uvim-lm", folders / "uvim-oracle")
    ds = dense.load("scenes:32:16", "test", size=32, seed=0)
    results = uvim_eval.evaluate(lm, oracle, qstate, task, ds)
    recorded = expected("uvim-lm")
    assert header["step"] == recorded["step"] == 2
    assert_close(results, {k: recorded[k] for k in ("stage II", "oracle (stage I)", "trivial baseline")})


def test_maskgit_measures_as_when_written(folders):
    model, header = maskgit_train.load(folders / "maskgit")
    token_file = tokens.load(folders / "tokens.npz")
    results = maskgit_train.evaluate(model, token_file.indices, token_file.labels, key=jr.key(0))
    assert header["kind"] == "maskgit" and np.isfinite(results["nll"])
    assert_close(results, expected("maskgit"))


def test_a_tokenizer_written_before_resumes(folders):
    """Resuming compares the task's header with the checkpoint's: fields added since must not make it differ."""
    from helpers import invoke

    result = invoke("train", "autoencoder", "--data", "procedural:64", "--preset", "tiny", "--levels", "5,5,5",
                    "--steps", 3, "--batch-size", 8, "--eval-every", 0, "--workdir", folders / "autoencoder-fsq",
                    "--resume")
    assert result.exit_code == 0, result.output
    assert runs.evaluate(folders / "autoencoder-fsq").results["usage"] > 0


@pytest.mark.parametrize("folder, read, path", [
    ("autoencoder-fsq", lambda r: TokenizerConfig.from_dict(r["tokenizer"]), ("tokenizer", "autoencoder")),
    ("autoencoder-vq", lambda r: TokenizerConfig.from_dict(r["tokenizer"]), ("tokenizer", "quantizer")),
    ("maskgit", lambda r: maskgit_train.config_of({"task": r}), ("maskgit",)),
    ("uvim-oracle", lambda r: OracleConfig.from_dict(r["oracle"]), ("oracle",)),
    ("uvim-oracle", lambda r: dense_tasks.from_dict(r["dense_task"]), ("dense_task",)),
])
def test_a_checkpoint_with_a_setting_this_version_lacks_is_refused_in_one_line(folder, read, path):
    record = checkpoint.read_header(FOLDERS / folder / checkpoint.CHECKPOINT)["task"]
    read(record)  # as written, it loads
    section = record
    for key in path:
        section = section[key]
    section["decoder_context"] = "full"  # a setting of another version
    with pytest.raises(InputError, match=r"settings this version of fsq-ref does not have \(decoder_context\)"):
        read(record)
