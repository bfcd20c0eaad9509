"""The benchmark scripts' shared stage runner: a finished run is reused only for the arguments it was made with; the
UViM benchmark's table, and its stages run side by side."""

import json
import sys
import threading
import time
from argparse import Namespace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import stages  # noqa: E402


@pytest.fixture
def fake_cli(monkeypatch):
    """Stands in for `fsq train`: records each call and marks the run folder as finished."""
    calls, finished = [], set()

    def fsq_cli(*args, log=None):
        calls.append(args)
        run = Path(args[args.index("--workdir") + 1])
        run.mkdir(parents=True, exist_ok=True)
        finished.add(run)

    monkeypatch.setattr(stages, "fsq_cli", fsq_cli)
    monkeypatch.setattr(stages.checkpoint, "progress", lambda run: (5, 5) if Path(run) in finished else None)
    return calls


def test_a_finished_stage_is_reused_for_the_same_arguments(fake_cli, tmp_path):
    stages.train(tmp_path / "run", "maskgit", "--steps", 5)
    stages.train(tmp_path / "run", "maskgit", "--steps", 5)
    assert len(fake_cli) == 1
    assert (tmp_path / "run" / stages.STAGE_RECORD).is_file()


def test_a_finished_stage_asked_for_other_arguments_is_refused(fake_cli, tmp_path):
    stages.train(tmp_path / "run", "uvim-oracle", "--codebook-size", 4096)
    with pytest.raises(SystemExit, match="--codebook-size 4096`, not .*--codebook-size 1024`.*another --workdir"):
        stages.train(tmp_path / "run", "uvim-oracle", "--codebook-size", 1024)
    assert len(fake_cli) == 1


def test_a_finished_stage_is_reused_whichever_way_its_folders_are_spelled(fake_cli, tmp_path, monkeypatch):
    (tmp_path / "oracle").mkdir()
    stages.train(tmp_path / "lm", "uvim-lm", "--oracle", tmp_path / "oracle")
    monkeypatch.chdir(tmp_path)
    stages.train(tmp_path / "lm", "uvim-lm", "--oracle", "oracle")  # relative to the directory it runs from
    assert len(fake_cli) == 1
    with pytest.raises(SystemExit, match="another --workdir"):  # another folder is another argument
        stages.train(tmp_path / "lm", "uvim-lm", "--oracle", "elsewhere")


def test_the_uvim_table_reports_the_oracle_once_and_stage_two_as_mean_and_std_over_seeds():
    import uvim as uvim_bench

    oracle = {"rmse": 0.25, "usage": 0.97, "perplexity": 900.0}
    seeds = [{"rmse": 1.0, "usage": 0.5, "token_accuracy": 0.2, "heldout_loss": 3.0, "perplexity": 400.0},
             {"rmse": 2.0, "usage": 0.7, "token_accuracy": 0.4, "heldout_loss": 3.5, "perplexity": 500.0}]
    results = {"FSQ": {"eval": {"oracle (stage I)": oracle, "trivial baseline": {"rmse": 3.5}}, "stage II": seeds,
                       "seconds": {"oracle": 100.0, "stage II": [10.0, 20.0]}}}
    lines = uvim_bench.table("depth", uvim_bench.merge(results, {"FSQ": "FSQ"}), seeds=2).splitlines()
    assert lines[0] == "### depth (stage II: mean ± std over 2 seeds)"
    assert lines[2] == ("| bottleneck | oracle rmse | stage II rmse | oracle usage | stage-II usage | "
                        "token accuracy | stage-II held-out loss | seconds (oracle + stage II) |")  # not perplexity
    assert lines[4] == "| trivial baseline | 3.5 | 3.5 | - | - | - | - | - |"
    assert lines[5] == "| FSQ | 0.25 | 1.5 ± 0.71 | 97.0% | 60 ± 14% | 30 ± 14% | 3.25 ± 0.35 | 100 + 30 |"


def test_a_uvim_row_pools_its_oracle_seeds():
    import uvim as uvim_bench

    def result(oracle_rmse, no_code_rmse, stage2_rmse):
        rows = {"oracle (stage I)": {"rmse": oracle_rmse, "usage": 0.9}, "no code": {"rmse": no_code_rmse},
                "trivial baseline": {"rmse": 3.5}}
        return {"eval": rows, "stage II": [{"rmse": r, "usage": 0.5, "token_accuracy": 0.2} for r in stage2_rmse],
                "seconds": {"oracle": 100.0, "stage II": [10.0] * len(stage2_rmse)}}

    results = {"FSQ": result(0.2, 0.5, [1.0, 2.0]), "FSQ, oracle seed 1": result(0.4, 0.7, [3.0, 4.0])}
    merged = uvim_bench.merge(results, {"FSQ": "FSQ", "FSQ, oracle seed 1": "FSQ"})
    assert [r["rmse"] for r in merged["FSQ"]["stage II"]] == [1.0, 2.0, 3.0, 4.0]
    lines = uvim_bench.table("depth", merged, seeds=2).splitlines()
    assert lines[0] == "### depth (stage II: mean ± std over 2 oracles x 2 stage-II seeds)"
    assert lines[5] == "| FSQ | 0.3 ± 0.14 | 2.5 ± 1.3 | 90.0 ± 0% | 50 ± 0% | 20 ± 0% | - | 200 + 40 |"
    assert lines[6] == "| FSQ, oracle's decoder without code | 0.6 ± 0.14 | - | - | - | - | - | - |"


def test_an_oracle_seed_is_passed_to_its_oracle_and_gets_its_own_folder(fake_stages, tmp_path):
    uvim_bench, _ = fake_stages
    pipelines = {"FSQ": (tmp_path / "depth-fsq", "depth", "fsq", True, 0),
                 "FSQ, oracle seed 1": (tmp_path / "depth-fsq-oracle-seed1", "depth", "fsq", True, 1)}
    uvim_bench.Stages(2).table(pipelines, _args(seeds=1))
    trained_with = {folder.name: json.loads((folder / "oracle" / "args.json").read_text())
                    for folder, *_ in pipelines.values()}
    assert "--seed" not in trained_with["depth-fsq"]  # so that oracles trained before the option are reused
    seed1 = trained_with["depth-fsq-oracle-seed1"]
    assert seed1[seed1.index("--seed") + 1] == "1"


def test_the_bottlenecks_of_oracle_seeds_for_get_that_many_oracles_and_the_others_one(tmp_path):
    import uvim as uvim_bench

    names = uvim_bench.names(1024)
    args = Namespace(oracle_seeds=2, oracle_seeds_for=["fsq", "vq-split"], context_ablation=True)
    pipelines, rows = uvim_bench.plan("panoptic", ["fsq", "vq-split", "vq-nosplit"], names, tmp_path, args)
    folders = sorted(folder.name for folder, *_ in pipelines.values())
    assert folders == sorted(["panoptic-fsq", "panoptic-fsq-oracle-seed1", "panoptic-vq-split",
                              "panoptic-vq-split-oracle-seed1", "panoptic-vq-nosplit", "panoptic-fsq-no-context",
                              "panoptic-fsq-no-context-oracle-seed1", "panoptic-vq-split-no-context",
                              "panoptic-vq-split-no-context-oracle-seed1"])
    assert sorted(set(rows.values())) == sorted(
        [names["fsq"], names["vq-split"], names["vq-nosplit"], names["fsq"] + ", no context",
         names["vq-split"] + ", no context"])
    assert [seed for *_, seed in pipelines.values()].count(1) == 4
    depth, _ = uvim_bench.plan("depth", ["fsq"], names, tmp_path, args)  # the ablation is panoptic's alone
    assert [folder.name for folder, *_ in depth.values()] == ["depth-fsq", "depth-fsq-oracle-seed1"]


def test_a_row_with_fewer_oracles_than_the_first_says_how_many():
    import uvim as uvim_bench

    oracle = {"rmse": 0.5, "usage": 0.9}
    evaluation = {"oracle (stage I)": oracle, "trivial baseline": {"rmse": 3.5}}
    run = {"rmse": 1.0, "usage": 0.5, "token_accuracy": 0.2, "heldout_loss": 3.0}
    result = lambda oracles: {"eval": [evaluation] * oracles, "stage II": [run] * 2 * oracles,
                              "seconds": {"oracle": [1.0] * oracles, "stage II": [2.0] * 2 * oracles}}
    lines = uvim_bench.table("depth", {"FSQ": result(2), "VQ-no-split": result(1)}, seeds=2).splitlines()
    assert lines[0] == "### depth (stage II: mean ± std over 2 oracles x 2 stage-II seeds)"
    assert lines[5].startswith("| FSQ | 0.5 ± 0 | 1 ± 0 |")
    assert lines[6].startswith("| VQ-no-split (1 oracle x 2 stage-II seeds) | 0.5 | 1 ± 0 |")


LM_LEARNING_RATE = 2e-3  # not the script's default, so that a stage II trained at the default fails
LM_ENCODER_LR_MULT = 0.25  # likewise


@pytest.fixture
def fake_stages(monkeypatch):
    """Stands in for the UViM benchmark's `fsq train` and `fsq eval`: each writes what the real one leaves behind
    (metrics.jsonl, eval-test.json), records when it starts and ends, and takes a moment, so that side-by-side runs
    overlap. An oracle whose folder is named "broken-..." fails; a stage II must be asked for `_args`'s learning
    rate and encoder multiplier."""
    import uvim as uvim_bench

    events, lock = [], threading.Lock()

    def note(*event):
        with lock:
            events.append(event)

    def train(run, kind, *args, log=None):
        note("start", run, log)
        time.sleep(0.05)
        if run.parent.name.startswith("broken"):
            raise RuntimeError(f"{run} failed")
        if kind == "uvim-lm":
            assert args[args.index("--learning-rate") + 1] == LM_LEARNING_RATE
            assert args[args.index("--encoder-lr-mult") + 1] == LM_ENCODER_LR_MULT
        if (run / "metrics.jsonl").exists():  # finished before: reused, as `stages.train` does
            return
        run.mkdir(parents=True)
        (run / "args.json").write_text(json.dumps([str(a) for a in args]))
        record = {"step": 7, "split": "eval", "rmse": 0.5 if kind == "uvim-lm" else 0.25, "usage": 0.9,
                  "token_accuracy": 0.1, "heldout_loss": 3.0}
        (run / "metrics.jsonl").write_text(json.dumps({"step": 7, "seconds": 12.0}) + "\n" + json.dumps(record))
        note("end", run, log)

    def fsq_cli(command, flag, run, *args, log=None):
        assert command == "eval"
        if "--temperature" in args:  # a stage II sampled
            row = {"rmse": 0.75, "usage": 1.0, "token_accuracy": 0.05, "heldout_loss": 3.0}
            (run / f"eval-test-temperature{args[-1]:g}-seed0.json").write_text(json.dumps({"stage II": row}))
            note("sampled", run, log)
            return
        note("evaluate", run, log)
        time.sleep(0.05)
        rows = {"oracle (stage I)": {"rmse": 0.25, "usage": 0.9}, "trivial baseline": {"rmse": 2.0}}
        (run / "eval-test.json").write_text(json.dumps(rows))
        note("evaluated", run, log)

    monkeypatch.setattr(uvim_bench, "train", train)
    monkeypatch.setattr(uvim_bench, "fsq_cli", fsq_cli)
    return uvim_bench, events


def _args(**overrides):
    return Namespace(**{"data": "scenes", "codebook_size": 1024, "oracle_preset": "quick-8x8", "oracle_steps": 7,
                        "dropped_tokens": "zeros", "lm_preset": "quick", "lm_steps": 7, "lm_eval_every": 7,
                        "lm_learning_rate": LM_LEARNING_RATE,
                        "lm_encoder_lr_mult": LM_ENCODER_LR_MULT, "lm_mirror": False, "seeds": 2,
                        "temperature": 0.0, **overrides})


def test_stage_two_is_given_the_encoder_multiplier_and_mirror_only_where_they_are_not_the_default():
    import uvim as uvim_bench

    assert "--mirror" not in uvim_bench.stage2_options(_args())
    assert "--mirror" in uvim_bench.stage2_options(_args(lm_mirror=True))
    assert "--encoder-lr-mult" not in uvim_bench.stage2_options(_args(lm_encoder_lr_mult=1.0))
    options = uvim_bench.stage2_options(_args(lm_encoder_lr_mult=0.3))
    assert options[options.index("--encoder-lr-mult") + 1] == 0.3
    assert options[options.index("--learning-rate") + 1] == LM_LEARNING_RATE


@pytest.mark.parametrize("jobs", [1, 2])
def test_the_uvim_stages_run_side_by_side_and_each_stage_two_after_its_oracle(fake_stages, tmp_path, jobs):
    uvim_bench, events = fake_stages
    pipelines = {q: (tmp_path / f"depth-{q}", "depth", q, True, 0) for q in ("fsq", "vq-split", "vq-nosplit")}
    results = uvim_bench.Stages(jobs).table(pipelines, _args())
    assert list(results) == list(pipelines)
    for row, result in results.items():
        assert result["eval"]["trivial baseline"] == {"rmse": 2.0}
        assert [r["rmse"] for r in result["stage II"]] == [0.5, 0.5]
        assert result["seconds"] == {"oracle": 12.0, "stage II": [12.0, 12.0]}
    assert "stage II sampled" not in results["fsq"]
    order = [(kind, run) for kind, run, _ in events if kind in ("start", "end")]
    for folder, *_ in pipelines.values():
        for seed in range(2):
            assert order.index(("end", folder / "oracle")) < order.index(("start", folder / f"lm-seed{seed}"))
    logs = {run: log for kind, run, log in events}
    if jobs == 1:  # one at a time: the children's output stays on stderr
        assert set(logs.values()) == {None}
    else:  # side by side: each child's output in a file beside its folder, and two stages ran at once
        assert all(log == run.with_name(run.name + ".log") for run, log in logs.items())
        running = peak = 0
        for kind, _ in order:
            running += 1 if kind == "start" else -1
            peak = max(peak, running)
        assert peak == 2


def test_the_uvim_oracles_can_pair_while_each_stage_two_runs_alone(fake_stages, tmp_path):
    uvim_bench, events = fake_stages
    pipelines = {q: (tmp_path / f"depth-{q}", "depth", q, True, 0) for q in ("fsq", "vq-split", "vq-nosplit")}
    results = uvim_bench.Stages(jobs=1, oracle_jobs=2).table(pipelines, _args())
    assert [r["rmse"] for r in results["vq-nosplit"]["stage II"]] == [0.5, 0.5]
    running, pairs = set(), 0
    for kind, run, log in events:
        if kind in ("start", "evaluate"):
            if run.name.startswith("lm-"):  # a stage II has the machine alone, its output on stderr
                assert not running and log is None
            else:  # an oracle or its evaluation may share it, its output in a file beside its folder
                assert log == run.with_name(run.name + ".log")
                assert not any(r.name.startswith("lm-") for r in running)
            running.add(run)
            pairs += len(running) == 2
        elif kind in ("end", "evaluated"):
            running.discard(run)
    assert pairs >= 1  # two oracles did run side by side
    order = [(kind, run.name) for kind, run, _ in events]
    first_stage_two = min(i for i, (_, name) in enumerate(order) if name.startswith("lm-"))
    assert ("evaluate", "oracle") in order[:first_stage_two]  # queued after the oracles, not after a stage II


def test_an_oracles_evaluation_runs_beside_its_first_stage_two(fake_stages, tmp_path):
    uvim_bench, events = fake_stages
    pipelines = {"FSQ": (tmp_path / "depth-fsq", "depth", "fsq", True, 0)}
    results = uvim_bench.Stages(2).table(pipelines, _args(seeds=1))
    assert results["FSQ"]["eval"]["trivial baseline"] == {"rmse": 2.0}
    order = [(kind, run.name) for kind, run, _ in events]
    assert order.index(("end", "oracle")) < order.index(("evaluate", "oracle")) < order.index(("end", "lm-seed0"))
    assert order.index(("start", "lm-seed0")) < order.index(("evaluated", "oracle"))


def test_a_failed_oracle_stops_the_uvim_table_before_its_stage_twos_start(fake_stages, tmp_path):
    uvim_bench, events = fake_stages
    pipelines = {"broken": (tmp_path / "broken-fsq", "depth", "fsq", True, 0)}
    with pytest.raises(RuntimeError, match="broken-fsq/oracle failed"):
        uvim_bench.Stages(2).table(pipelines, _args())
    assert [run.name for _, run, _ in events] == ["oracle"]


def test_the_uvim_table_adds_each_stage_two_sampled_at_a_temperature(fake_stages, tmp_path):
    uvim_bench, events = fake_stages
    pipelines = {"FSQ": (tmp_path / "depth-fsq", "depth", "fsq", True, 0)}
    results = uvim_bench.Stages(2).table(pipelines, _args(temperature=1.0))
    assert [r["rmse"] for r in results["FSQ"]["stage II sampled"]] == [0.75, 0.75]
    assert sorted(run.name for kind, run, _ in events if kind == "sampled") == ["lm-seed0", "lm-seed1"]
    lines = uvim_bench.table("depth", uvim_bench.merge(results, {"FSQ": "FSQ"}), seeds=2, temperature=1.0).splitlines()
    assert lines[-2].startswith("| FSQ | 0.25 | 0.5 ± 0 |")
    assert lines[-1] == "| FSQ, sampled at temperature 1 | - | 0.75 ± 0 | - | 100 ± 0% | 5 ± 0% | - | - |"
    uvim_bench.Stages(2).table(pipelines, _args(temperature=1.0))  # again: everything is reused
    assert len([e for e in events if e[0] == "sampled"]) == 2
