"""The dependency floors in pyproject.toml hold: scripts/check-floors.sh installs every dependency at its floor in a
scratch environment and runs the imports, the CLI's help, the quantizer tests and the CLI run tests there (about four
minutes with pip's cache warm; needs PyPI)."""

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pypi_reachable() -> bool:
    """Whether pip can download from its index (as configured here), in a few seconds at most."""
    with tempfile.TemporaryDirectory() as tmp:
        probe = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--disable-pip-version-check",
                 "--timeout", "5", "--retries", "0", "-q", "-d", tmp, "click==8.1.0"]
        try:
            return subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False


@pytest.mark.slow
def test_dependency_floors_hold():
    if not pypi_reachable():
        pytest.skip("pip cannot download from PyPI (no network?); check-floors.sh installs the dependencies from it")
    result = subprocess.run(["bash", str(ROOT / "scripts" / "check-floors.sh")], cwd=ROOT, capture_output=True,
                            text=True, timeout=1800)
    assert result.returncode == 0, f"check-floors.sh failed:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
