"""The UViM commands end to end on the tiny presets and generated scenes: train both stages, predict, evaluate."""

import dataclasses
import json
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_bad_input, invoke
from PIL import Image

from fsq_ref import uvim
from fsq_ref.common.errors import InputError
from fsq_ref.data import dense
from fsq_ref.evaluation import runs, uvim_eval
from fsq_ref.training import uvim_train

DATA = ["--data", "scenes:64:64", "--preset", "tiny", "--batch-size", "8"]


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uvim") / "oracle"
    result = invoke("train", "uvim-oracle", "--task", "panoptic", *DATA, "--steps", 4, "--workdir", workdir)
    assert result.exit_code == 0, result.output
    return workdir


@pytest.fixture(scope="module")
def lm(oracle):
    workdir = oracle.parent / "lm"
    result = invoke("train", "uvim-lm", "--oracle", oracle, "--preset", "tiny", "--batch-size", 8, "--steps", 4,
                    "--workdir", workdir)
    assert result.exit_code == 0, result.output
    return workdir


@pytest.mark.parametrize("command", [["train", "uvim-oracle"], ["train", "uvim-lm"], ["predict"]])
def test_help(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0 and "Example" in result.output


def test_both_stages_train_and_log(oracle, lm):
    for folder, metric in ((oracle, "pq"), (lm, "token_accuracy")):
        records = [json.loads(line) for line in open(folder / "metrics.jsonl")]
        assert records[-1]["split"] == "eval" and metric in records[-1] and 0 <= records[-1]["usage"] <= 1
        assert Image.open(folder / "predictions.png").size[0] > 32


def test_predict_writes_predictions_codes_and_a_picture(lm, tmp_path):
    out = tmp_path / "preds.npz"
    result = invoke("predict", "--workdir", lm, "--limit", 20, "--out", out)
    assert result.exit_code == 0, result.output
    with np.load(out) as f:
        assert f["semantic"].shape == f["instance"].shape == (20, 32, 32)
        assert f["code"].shape == (20, 16) and f["code"].max() < 4375
    assert out.with_suffix(".png").is_file() and str(out.with_suffix(".png")) in result.output
    # Greedy decoding is deterministic: the same command gives the same predictions.
    again = tmp_path / "again.npz"
    invoke("predict", "--workdir", lm, "--limit", 20, "--out", again)
    with np.load(out) as a, np.load(again) as b:
        np.testing.assert_array_equal(a["code"], b["code"])


def test_eval_reports_stage_two_oracle_and_baseline(lm, tmp_path):
    out = tmp_path / "eval.json"
    result = invoke("eval", "--workdir", lm, "--task", "panoptic", "--limit", 64, "--out", out)
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    for row in ("stage II", "oracle (stage I)", "no code", "trivial baseline"):
        assert row in result.output and 0 <= rows[row]["pq"] <= 100
    assert 0 <= rows["stage II"]["token_accuracy"] <= 1


def test_eval_samples_stage_two_at_a_temperature_and_leaves_the_greedy_evaluation_alone(lm):
    def sampled(temperature, seed):
        result = invoke("eval", "--workdir", lm, "--limit", 40, "--temperature", temperature, "--seed", seed)
        assert result.exit_code == 0, result.output
        record = json.loads((lm / f"eval-test-temperature{temperature:g}-seed{seed}.json").read_text())
        assert (record["temperature"], record["seed"]) == (temperature, seed)
        return record

    greedy = runs.evaluate(lm, limit=40).results
    near_zero, hot, other_seed = sampled(1e-6, 0), sampled(1.0, 0), sampled(1.0, 1)
    assert not (lm / "eval-test.json").exists()  # where a greedy `fsq eval` would write
    assert near_zero["stage II"] == pytest.approx(greedy["stage II"])  # a vanishing temperature is greedy
    assert hot["stage II"] != other_seed["stage II"]  # seeds draw other codes (40 examples x 16 tokens)
    for record in (near_zero, hot, other_seed):  # only stage II samples
        assert record["oracle (stage I)"] == pytest.approx(greedy["oracle (stage I)"])


def test_the_token_analysis_decodes_as_eval_does_and_measures_wrong_tokens_against_chance(lm):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import uvim_tokens

    for folder, message in ((lm.parent / "missing", "no run at"), (lm.parent / "oracle", "is a stage-I folder")):
        with pytest.raises(InputError, match=message):
            uvim_tokens.analyse(str(folder), limit=16, seed=0)
    row = uvim_tokens.analyse(str(lm), limit=16, seed=0)
    rows = runs.evaluate(lm, limit=16).results  # `fsq eval`'s rows for the same examples
    assert row["token accuracy"] == pytest.approx(rows["stage II"]["token_accuracy"])
    for name, eval_row in (("oracle", "oracle (stage I)"), ("stage II", "stage II")):
        assert row["metrics"][name]["pq"] == pytest.approx(rows[eval_row]["pq"])
    # Its decoding of given codes (used for the chance-corrupted ones) gives eval's metric on the oracle's codes.
    models = runs.uvim_models(lm)
    ds = runs.dense_data(models.header, None, None, "test", 16)
    truth = uvim_eval.predict(None, models.oracle, models.qstate, models.task, ds)[1]
    decoded = uvim_tokens.decoded_metric(models.oracle, models.qstate, models.task, ds, truth)
    assert decoded["pq"] == pytest.approx(rows["oracle (stage I)"]["pq"])
    assert row["distance ratio"] > 0 and 0 <= row["one step (chance)"] <= 1 and 0 <= row["one step"] <= 1
    # Sampled, it draws stage II's codes as `fsq eval --temperature --seed` does.
    hot = uvim_tokens.analyse(str(lm), limit=16, seed=3, temperature=1.0)
    rows = runs.evaluate(lm, limit=16, temperature=1.0, seed=3).results
    assert hot["token accuracy"] == pytest.approx(rows["stage II"]["token_accuracy"])
    assert hot["metrics"]["stage II"]["pq"] == pytest.approx(rows["stage II"]["pq"])
    assert hot["metrics"]["stage II"] != row["metrics"]["stage II"]


def test_the_token_analysis_prints_the_metric_asked_for_and_refuses_one_the_task_lacks(lm, monkeypatch, capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import uvim_tokens

    monkeypatch.setattr(sys, "argv", ["uvim_tokens.py", str(lm), "--limit", "8", "--metric", "rq",
                                      "--chance-share", "0"])
    uvim_tokens.main()
    header, rule, line = capsys.readouterr().out.splitlines()[:3]
    assert "rq: oracle code" in header and "chance at 0.0% of positions" in header and line.startswith(f"| {lm} |")
    oracle, *_, nothing_drawn = line.strip("| ").split(" | ")[4:]
    assert nothing_drawn == oracle  # no position drawn by chance: the oracle's own code
    monkeypatch.setattr(sys, "argv", ["uvim_tokens.py", str(lm), "--limit", "8", "--metric", "rmse"])
    with pytest.raises(SystemExit, match="--metric rmse is not a metric .* give one of pq, "):
        uvim_tokens.main()
    monkeypatch.setattr(sys, "argv", ["uvim_tokens.py", str(lm), "--chance-share", "1.5"])
    with pytest.raises(SystemExit, match="--chance-share 1.5 is not a share"):
        uvim_tokens.main()


def test_the_image_use_probe_pairs_each_code_with_its_own_another_and_the_mean_image(lm, monkeypatch, capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import uvim_image_use

    row = uvim_image_use.image_use(str(lm), limit=16)
    assert row["own image"] == pytest.approx(runs.evaluate(lm, limit=16).results["stage II"]["heldout_loss"])
    # The same pairs the other way round: the images shifted against fixed codes.
    models = runs.uvim_models(lm)
    ds = runs.dense_data(models.header, None, None, "test", 16)
    codes = uvim_eval.predict(None, models.oracle, models.qstate, models.task, ds)[1]
    shifted = dataclasses.replace(ds, images=np.roll(ds.images, -1, axis=0))
    shifted_loss = uvim_eval.heldout_loss(models.lm, models.task, uvim_eval.CodedData(shifted, codes))
    assert row["another image"] == pytest.approx(shifted_loss)
    assert len({row["own image"], row["another image"], row["mean image"]}) == 3
    monkeypatch.setattr(sys, "argv", ["uvim_image_use.py", str(lm), "--limit", "8"])
    uvim_image_use.main()
    header_line, _, line = capsys.readouterr().out.splitlines()[:3]
    assert "the image's worth" in header_line and line.startswith(f"| {lm} |")
    for argv, message in (([str(lm), "--limit", "1"], "1 test example; give --limit 2"),
                          ([str(lm.parent / "oracle")], "is a stage-I folder")):
        monkeypatch.setattr(sys, "argv", ["uvim_image_use.py", *argv])
        with pytest.raises(SystemExit, match=message):
            uvim_image_use.main()


def test_the_colour_fd_analysis_splits_evals_distance_and_refuses_other_tasks(lm, tmp_path, monkeypatch, capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import colour_fd

    oracle = tmp_path / "oracle"
    assert invoke("train", "uvim-oracle", "--task", "colorization", *DATA, "--codebook-size", 64, "--steps", 3,
                  "--workdir", oracle).exit_code == 0
    stage2 = tmp_path / "lm"
    assert invoke("train", "uvim-lm", "--oracle", oracle, "--preset", "tiny", "--batch-size", 8, "--steps", 3,
                  "--workdir", stage2).exit_code == 0
    row = colour_fd.analyse(str(stage2), [8, 16], limit=16, seed=0, temperature=0.0)
    rows = runs.evaluate(stage2, limit=16).results  # `fsq eval`'s rows: its colour FD has 8 bins per axis
    for name, eval_row in (("oracle", "oracle (stage I)"), ("stage II", "stage II")):
        assert row["bins"][8][name]["fd"] == pytest.approx(rows[eval_row]["colour_fd"])
    for terms in row["bins"].values():
        s = terms["stage II"]
        assert s["mean term"] >= 0 and s["mean term"] + s["covariance terms"] == pytest.approx(s["fd"])
    # Chroma: none in grey, and pure blue's is |(Cb, Cr)| = |(0.5, -0.0813)|.
    grey, blue = np.full((1, 2, 2, 3), 90, np.uint8), np.zeros((1, 2, 2, 3), np.uint8)
    blue[..., 2] = 255
    assert colour_fd.chroma(grey) == pytest.approx(0.0, abs=1e-12)
    assert colour_fd.chroma(blue) == pytest.approx(np.hypot(0.5, 0.081312))
    where = np.array([[[True, False], [False, False]]])
    assert colour_fd.chroma_error(grey, blue, where) == pytest.approx(np.hypot(0.5, 0.081312))
    assert colour_fd.chroma_error(blue, blue, ~where) == pytest.approx(0.0, abs=1e-12)
    # Grey targets, blue predictions, 2 bins per axis: every pixel moved from bin (+, +) (grey's chroma is 0, which
    # bins with the upper half) to (+, -); the mean term is 100 x (1^2 + 1^2); those two bins are the largest excesses.
    terms = colour_fd.fd_terms(np.repeat(grey, 3, axis=0), np.repeat(blue, 3, axis=0), 2)
    assert terms["mean term"] == pytest.approx(200.0)
    assert sorted(terms["largest excess"]) == [(0.25, -0.25, 1.0, None), (0.25, 0.25, -1.0, None)]
    things = np.zeros((3, 2, 2), bool)
    things[0] = True  # the first of the three images: a third of the pixels, so a third of each excess
    on_things = [t for *_, t in sorted(colour_fd.fd_terms(np.repeat(grey, 3, axis=0), np.repeat(blue, 3, axis=0), 2,
                                                          things)["largest excess"])]
    assert on_things == pytest.approx([1 / 3, -1 / 3])
    monkeypatch.setattr(sys, "argv", ["colour_fd.py", str(stage2), "--limit", "8", "--bins", "8"])
    colour_fd.main()
    line = capsys.readouterr().out.splitlines()[2]
    assert line.startswith(f"| {stage2} | 8 | ") and line.split(" | ")[-1].count("/") == 2 and "(things " in line
    for argv, message in (([str(lm)], "is a panoptic stage II, not a colorization stage II"),
                          ([str(stage2), "--bins", "4,x"], "--bins 4,x is not a list of bin counts")):
        monkeypatch.setattr(sys, "argv", ["colour_fd.py", *argv])
        with pytest.raises(SystemExit, match=message):
            colour_fd.main()


@pytest.mark.parametrize("task, options", [("depth", ["--quantizer", "vq-split", "--dropped-tokens", "flag"]),
                                           ("colorization", ["--quantizer", "vq-nosplit", "--no-context"])])
def test_other_tasks_train_and_predict_from_the_oracle(task, options, tmp_path):
    workdir = tmp_path / task
    result = invoke("train", "uvim-oracle", "--task", task, *DATA, *options, "--codebook-size", 64, "--steps", 3,
                    "--workdir", workdir)
    assert result.exit_code == 0, result.output
    # Without context, code dropout stays on: the ablation changes the context alone.
    context = ("without image context, code dropout on (dropped tokens: zeros)" if "--no-context" in options
               else "with image context, code dropout on (dropped tokens: flag)")
    assert context in result.output
    assert context.split(",")[0] in invoke("info", workdir).output  # recorded in the run's header
    out = tmp_path / "preds.npz"
    assert invoke("predict", "--workdir", workdir, "--limit", 8, "--out", out).exit_code == 0
    with np.load(out) as f:
        assert (f["depth"].shape == (8, 32, 32)) if task == "depth" else (f["image"].shape == (8, 32, 32, 3))


def test_stage_two_reads_its_oracles_codes_from_the_cache(oracle, lm, monkeypatch):
    # The `lm` fixture's training cached the oracle's codes of both splits; a second stage II reuses them.
    models = runs.uvim_models(lm)
    train_ds, test_ds = (runs.dense_data(models.header, None, None, split) for split in ("train", "test"))
    monkeypatch.setattr(uvim_train, "run_over", lambda *a: pytest.fail("the oracle's codes were computed again"))
    again = uvim_train.LMTask(uvim.LMConfig(**models.header["task"]["lm"]), oracle, train_ds, test_ds, batch_size=8,
                              seed=1, weight_decay=0.0, data_header={})
    monkeypatch.undo()
    np.testing.assert_array_equal(again.test_coded.codes,
                                  uvim_eval.predict(None, models.oracle, models.qstate, models.task, test_ds)[1])


def test_stage_two_with_mirror_images_trains_on_their_own_codes(oracle, lm, tmp_path):
    result = invoke("train", "uvim-lm", "--oracle", oracle, "--preset", "tiny", "--batch-size", 8, "--steps", 2,
                    "--mirror", "--workdir", tmp_path / "lm")
    assert result.exit_code == 0, result.output
    assert "64 train and their mirror images" in result.output
    models = runs.uvim_models(lm)
    train_ds, test_ds = (runs.dense_data(models.header, None, None, split) for split in ("train", "test"))
    task = uvim_train.LMTask(uvim.LMConfig(**models.header["task"]["lm"]), oracle, train_ds, test_ds, batch_size=8,
                             seed=1, weight_decay=0.0, data_header={}, mirror=True)
    assert task.header["mirror"] is True
    # Every training batch draws from the examples and their mirror images, each with the oracle's code of what it
    # shows (not the original's code reused), and one pass over the data covers all 128.
    mirrors = dense.with_mirrors(train_ds)
    codes = uvim_eval.codes_of(models.oracle, models.qstate, models.task, mirrors)
    assert not np.array_equal(codes[:64], codes[64:])
    seen = []
    for _, batch in zip(range(16), task.batches(0)):
        idx = [int(np.flatnonzero((mirrors.images == image).all(axis=(1, 2, 3)))[0]) for image in batch["image"]]
        np.testing.assert_array_equal(batch["code"], codes[idx])
        seen += idx
    assert sorted(seen) == list(range(128))


def test_sampling_draws_anew_in_every_batch(lm):
    # Two evaluation batches of the same examples: sampled, they must not repeat each other's codes.
    models = runs.uvim_models(lm)
    ds = runs.dense_data(models.header, None, None, "test", None)
    reps = 2 * uvim_eval.EVAL_BATCH // len(ds)
    assert reps * len(ds) == 2 * uvim_eval.EVAL_BATCH
    twice = dataclasses.replace(ds, **{k: np.concatenate([getattr(ds, k)] * reps)
                                      for k in ("images", "depth", "semantic", "instance")})
    half = uvim_eval.EVAL_BATCH
    greedy = uvim_eval.predict(models.lm, models.oracle, models.qstate, models.task, twice)[1]
    sampled = uvim_eval.predict(models.lm, models.oracle, models.qstate, models.task, twice, temperature=1.0)[1]
    np.testing.assert_array_equal(greedy[:half], greedy[half:])
    assert np.mean(sampled[:half] != sampled[half:]) > 0.5


def test_bad_input(oracle, lm, tmp_path):
    assert_bad_input(invoke("eval", "--workdir", lm, "--task", "depth"), "trained for panoptic")
    assert_bad_input(invoke("eval", "--workdir", lm, "--temperature", -1), "--temperature must be >= 0")
    assert_bad_input(invoke("eval", "--workdir", lm, "--seed", 3), "give --temperature too")
    assert_bad_input(invoke("eval", "--workdir", oracle, "--temperature", 1), "stage I, which samples nothing")
    assert_bad_input(invoke("train", "uvim-lm", "--oracle", lm, "--steps", 1, "--workdir", tmp_path / "x"),
                     "not 'uvim-oracle'")
    assert_bad_input(invoke("train", "uvim-lm", "--oracle", oracle, "--steps", 1, "--encoder-lr-mult", 0,
                            "--workdir", tmp_path / "x"), "--encoder-lr-mult must be > 0")
    # The image encoder's rate is part of the run: resuming at another one would continue another trajectory.
    assert_bad_input(invoke("train", "uvim-lm", "--oracle", oracle, "--preset", "tiny", "--batch-size", 8, "--steps",
                            4, "--encoder-lr-mult", 2, "--workdir", lm, "--resume"), "other settings")
    assert_bad_input(invoke("train", "uvim-oracle", "--task", "depth", "--data", "nonsense", "--steps", 1,
                            "--workdir", tmp_path / "y"), "nonsense")
    assert_bad_input(invoke("train", "uvim-oracle", "--task", "depth", *DATA, "--levels", "7,1", "--steps", 1,
                            "--workdir", tmp_path / "z"), "levels")
    other = tmp_path / "other-oracle"
    assert invoke("train", "uvim-oracle", "--task", "panoptic", *DATA, "--steps", 1, "--seed", 1,
                  "--workdir", other).exit_code == 0
    assert_bad_input(invoke("predict", "--workdir", lm, "--oracle", other, "--out", tmp_path / "p.npz"),
                     "another oracle")
    assert not (tmp_path / "p.npz").exists()


@pytest.mark.slow  # bf16 and dtype-checked resume are covered by default in test_cli and test_precision
def test_both_stages_train_in_bfloat16_and_resume_only_in_it(oracle, tmp_path):
    # The fixtures' settings but --dtype bfloat16, so that only the training steps compile anew.
    oracle_args = ["train", "uvim-oracle", "--task", "panoptic", *DATA, "--steps", 2, "--workdir", tmp_path / "oracle"]
    result = invoke(*oracle_args, "--dtype", "bfloat16")
    assert result.exit_code == 0, result.output
    assert_bad_input(invoke(*oracle_args, "--dtype", "float32", "--resume"), "other settings")
    result = invoke("train", "uvim-lm", "--oracle", oracle, "--preset", "tiny", "--batch-size", 8, "--steps", 2,
                    "--dtype", "bfloat16", "--workdir", tmp_path / "lm")
    assert result.exit_code == 0, result.output
    # Loading checks every leaf against the float32 structure the config describes.
    stage2 = runs.uvim_models(tmp_path / "lm")
    oracle_header = runs.uvim_models(tmp_path / "oracle").header
    assert stage2.header["loop"]["dtype"] == oracle_header["loop"]["dtype"] == "bfloat16"
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(eqx.filter(stage2.lm, eqx.is_inexact_array)))
