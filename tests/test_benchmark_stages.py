"""The benchmark scripts' shared stage runner: a finished run is reused only for the arguments it was made with."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import stages  # noqa: E402


@pytest.fixture
def fake_cli(monkeypatch):
    """Stands in for `fsq train`: records each call and marks the run folder as finished."""
    calls, finished = [], set()

    def fsq_cli(*args):
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


def test_the_uvim_table_reports_the_oracle_once_and_stage_two_as_mean_and_std_over_seeds():
    import uvim as uvim_bench

    oracle = {"rmse": 0.25, "usage": 0.97, "perplexity": 900.0}
    seeds = [{"rmse": 1.0, "usage": 0.5, "token_accuracy": 0.2, "heldout_loss": 3.0, "perplexity": 400.0},
             {"rmse": 2.0, "usage": 0.7, "token_accuracy": 0.4, "heldout_loss": 3.5, "perplexity": 500.0}]
    results = {"FSQ": {"eval": {"oracle (stage I)": oracle, "trivial baseline": {"rmse": 3.5}}, "stage II": seeds,
                       "seconds": {"oracle": 100.0, "stage II": [10.0, 20.0]}}}
    lines = uvim_bench.table("depth", results, seeds=2).splitlines()
    assert lines[2] == ("| bottleneck | oracle rmse | stage II rmse | oracle usage | stage-II usage | "
                        "token accuracy | stage-II held-out loss | seconds (oracle + stage II) |")  # not perplexity
    assert lines[4] == "| trivial baseline | 3.5 | 3.5 | - | - | - | - | - |"
    assert lines[5] == "| FSQ | 0.25 | 1.5 ± 0.71 | 97.0% | 60 ± 14% | 30 ± 14% | 3.25 ± 0.35 | 100 + 30 |"
