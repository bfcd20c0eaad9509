"""The codebook-size study on a tiny budget (its files, resuming, refusing mixed settings) and the PNG line plots."""

import json
import math
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from fsq_ref.common.errors import InputError
from fsq_ref.evaluation import features
from fsq_ref.experiments import plot, study, study_report
from fsq_ref.training import checkpoint, train

TINY = dict(data_spec="procedural:64", sizes=(16, 64), quantizers=("fsq", "vq"), steps=3, batch_size=16,
            preset="tiny", seed=0, maskgit_steps=2)


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    """One study of 4 runs, trained once for every test below: (workdir, results, printed lines)."""
    workdir = tmp_path_factory.mktemp("study")
    lines = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FSQ_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        mp.setattr(features, "TRAIN_STEPS", 2)  # the feature classifier's quality does not matter here
        mp.setattr(study, "MASKGIT_PRESET", "tiny")
        mp.setattr(study, "SAMPLES_PER_CLASS", 3)
        results = study.run_study(workdir, **TINY, echo=lines.append)
    return workdir, results, lines


def test_study_writes_every_run_with_measurements_in_range(tiny_study):
    workdir, results, lines = tiny_study
    assert json.loads((workdir / study_report.RESULTS_JSON).read_text()) == results
    assert [(r["quantizer"], r["size"]) for r in results] == [("fsq", 16), ("vq", 16), ("fsq", 64), ("vq", 64)]
    for r in results:
        assert r["steps"] == 3 and (workdir / r["run"] / study.RESULT).is_file()
        assert 0 < r["usage"] <= 1 and r["psnr"] > 0 and r["frechet_distance"] >= 0
        assert 0 <= r["bits_per_token"] <= math.log2(r["size"]) + 1e-9
        assert r["codes_used"] == round(r["usage"] * r["codebook_size"])
    assert [r["codebook_size"] for r in results] == [15, 16, 64, 64]  # FSQ's levels (5, 3) give 15 codes
    assert "[3/4] fsq, 64 codes (levels 8,8: 64 codes)" in lines and "[2/4] vq, 16 codes" in lines
    table = (workdir / study_report.RESULTS_MD).read_text()
    assert "| codebook size | fsq | vq |" in table and "/15)" in table  # FSQ's 15 codes at size 16
    # Fig. 3's MaskGIT panels for FSQ (in study.MASKGIT_KINDS), not for plain VQ.
    for r in results:
        assert ("maskgit_bits_per_token" in r) == (r["quantizer"] == "fsq")
    for r in results[::2]:
        assert 0 < r["maskgit_bits_per_token"] < math.log2(r["codebook_size"]) + 1
        assert r["sampling_frechet_distance"] >= 0 and 0 <= r["sample_class_accuracy"] <= 1
        assert (workdir / r["run"] / "maskgit" / "checkpoint.fsq").is_file()
    assert "## Compression cost with a masked transformer" in table and "## Sampling Frechet distance" in table
    assert f"| 16 | {results[0]['maskgit_bits_per_token']:.2f} ({results[0]['bits_per_token']:.2f}) | - |" in table
    width, height = Image.open(workdir / study_report.FIGURE).size
    assert width > 400 and height > 3 * plot.PANEL_SIZE[1]  # six panels in three rows


def test_study_run_again_skips_every_run(tiny_study, monkeypatch):
    workdir, results, _ = tiny_study

    def fail(*args, **kwargs):
        raise AssertionError("a measured run was trained or measured again")

    monkeypatch.setattr(train, "run", fail)
    monkeypatch.setattr(features, "load_or_train", fail)
    lines = []
    assert study.run_study(workdir, **TINY, echo=lines.append) == results
    assert sum("measured before" in line for line in lines) == 4


def test_study_resumes_a_run_without_result(tiny_study, tmp_path, monkeypatch):
    workdir, results, _ = tiny_study
    copy = tmp_path / "study"
    shutil.copytree(workdir, copy)
    for name in ("fsq-64", "vq-64"):
        (copy / name / study.RESULT).unlink()  # as if stopped after training, before measuring
    calls = []
    real_run = train.run
    monkeypatch.setattr(train, "run", lambda *a, **kw: calls.append(kw["resume"]) or real_run(*a, **kw))
    monkeypatch.setattr(features, "TRAIN_STEPS", 2)
    monkeypatch.setattr(study, "MASKGIT_PRESET", "tiny")
    monkeypatch.setattr(study, "SAMPLES_PER_CLASS", 3)
    monkeypatch.setenv("FSQ_CACHE_DIR", str(tmp_path / "cache"))
    again = study.run_study(copy, **TINY, echo=lambda line: None)
    assert calls == [True, True, True]  # fsq-64's tokenizer and its MaskGIT, vq-64's tokenizer: each resumed
    assert again[:2] == results[:2] and again[2]["resumed"] and again[3]["resumed"]
    for key in ("psnr", "maskgit_bits_per_token", "sampling_frechet_distance"):  # the resumed runs had no steps left
        assert again[2][key] == pytest.approx(results[2][key])
    assert again[3]["psnr"] == pytest.approx(results[3]["psnr"])


def test_study_refuses_runs_made_with_other_settings(tiny_study):
    workdir, _, _ = tiny_study
    with pytest.raises(InputError, match="steps = 3, not 4"):
        study.run_study(workdir, **{**TINY, "steps": 4}, echo=lambda line: None)
    with pytest.raises(InputError, match="maskgit_steps = 2, not 5"):
        study.run_study(workdir, **{**TINY, "maskgit_steps": 5}, echo=lambda line: None)


def test_a_growing_maskgit_budget_trains_rounds_until_one_lowers_the_held_out_nll_less_than_the_tolerance(
        tmp_path, monkeypatch):
    monkeypatch.setenv("FSQ_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(features, "TRAIN_STEPS", 2)
    monkeypatch.setattr(study, "MASKGIT_PRESET", "tiny")
    monkeypatch.setattr(study, "SAMPLES_PER_CLASS", 3)
    monkeypatch.setattr(study, "MAX_ROUNDS", 3)
    tolerance, lines = 1e-3, []
    options = {**TINY, "sizes": (16,), "quantizers": ("fsq",), "maskgit_until_flat": tolerance}
    [result] = study.run_study(tmp_path / "study", **options, echo=lines.append)
    nll, rounds = result["maskgit_nll_by_round"], len(result["maskgit_nll_by_round"])
    assert 2 <= rounds <= 3 and result["maskgit_steps_trained"] == 2 * rounds and result["maskgit_nll"] == nll[-1]
    assert all(before - after >= tolerance for before, after in zip(nll[:-2], nll[1:-1]))  # went on while it fell
    assert result["maskgit_flat"] == (nll[-2] - nll[-1] < tolerance)
    assert result["maskgit_flat"] or rounds == 3  # it stops when flat, or at the cap
    run_dir = tmp_path / "study" / result["run"]
    folders = [run_dir / "maskgit"] + [run_dir / f"maskgit-round{r}" for r in range(2, rounds + 1)]
    for before, after in zip(folders, folders[1:]):  # each round starts from the one before
        header = checkpoint.read_header(after / checkpoint.CHECKPOINT)
        assert header["init_from"]["workdir"] == str(before.resolve()) and header["step"] == 2
    assert not (run_dir / f"maskgit-round{rounds + 1}").exists()
    assert "MaskGIT budget" in (tmp_path / "study" / study_report.RESULTS_MD).read_text()
    with pytest.raises(InputError, match="maskgit_until_flat = 0.001, not 0.0"):  # no mixing with a fixed budget
        study.run_study(tmp_path / "study", **TINY, echo=lambda line: None)


def test_plan_checks_every_size_before_training():
    with pytest.raises(InputError, match="no recommended levels for codebook size 100"):
        study.plan((16, 100), ("fsq", "vq"))
    with pytest.raises(InputError, match="unknown quantizer"):
        study.plan((16,), ("fsq", "pq"))
    runs = study.plan((64, 16, 16), ("vq", "fsq"))
    assert [r.name for r in runs] == ["vq-16", "fsq-16", "vq-64", "fsq-64"]


@settings(deadline=None)
@given(st.floats(-1e6, 1e6), st.floats(-1e6, 1e6), st.integers(2, 10))
def test_nice_ticks_cover_the_range_with_round_even_steps(lo, hi, target):
    ticks = plot.nice_ticks(lo, hi, target)
    tolerance = 1e-9 * (abs(lo) + abs(hi) + 1)  # rounding the ticks to the step's digits may move them a hair
    assert ticks[0] <= min(lo, hi) + tolerance and ticks[-1] >= max(lo, hi) - tolerance
    steps = np.diff(ticks)
    assert np.allclose(steps, steps[0], rtol=1e-6)
    # The step's power of ten, robust to a difference of ticks that falls a hair under it (0.0999... for 0.1).
    mantissa = steps[0] / 10 ** math.floor(math.log10(steps[0]) + 1e-9)
    assert any(math.isclose(mantissa, m, rel_tol=1e-6) for m in (1, 2, 5))  # 1, 2 or 5 times a power of ten
    assert all(math.isclose(t / steps[0], round(t / steps[0]), abs_tol=1e-6) for t in ticks)  # multiples of it
    assert len(ticks) - 1 <= 2.5 * target + 2


def test_nice_ticks_examples():
    assert plot.nice_ticks(0.013, 0.97) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert plot.nice_ticks(-0.875, -0.875, 9) == [round(-1.4 + 0.1 * i, 1) for i in range(12)]  # found by Hypothesis
    assert plot.nice_ticks(3.9, 14) == [2, 4, 6, 8, 10, 12, 14]
    assert plot.nice_ticks(5, 5)[0] < 5 < plot.nice_ticks(5, 5)[-1]  # a single value still gets an axis


def test_line_panels_writes_a_png_of_the_grid(tmp_path):
    xs = [4, 6, 8]
    panels = [plot.Panel(f"panel {i}", "log2 codebook size", "value",
                         {"fsq": (xs, [1.0, 2.0, 3.0]), "vq": (xs, [1.5, None, 0.5])}) for i in range(3)]
    path = plot.line_panels(panels, tmp_path / "plot.png", columns=2)
    image = Image.open(path)
    width, height = plot.PANEL_SIZE
    assert image.format == "PNG" and image.size[0] == 2 * width and image.size[1] > 2 * height
    assert len(np.unique(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0)) > 10  # drawn, in colour
