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
