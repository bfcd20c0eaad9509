"""What a user installs: the core (`pip install .`) is the quantizers and their four dependencies; the `fsq` command
needs the `cli` extra and says so in one line without it. The slow test builds the wheel and the sdist and installs
the wheel into fresh virtual environments, as a user of the package would."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = ("click", "optax", "PIL", "safetensors", "flax", "tensorboardX", "mkdocs")


def python(code: str, executable: str = sys.executable, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([executable, "-c", code], capture_output=True, text=True, timeout=300, **kwargs)


def test_importing_the_package_loads_no_optional_dependency():
    result = python("import sys, fsq_ref, fsq_ref.layers, fsq_ref.flax_layers\n"
                    f"print([m for m in {OPTIONAL!r} if m in sys.modules])")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("missing", ["click", "optax", "PIL"])
def test_fsq_without_the_cli_extra_is_one_line(missing):
    # As if the package were not installed: importing it fails the way a missing distribution does.
    result = python(f"import sys; sys.modules[{missing!r}] = None; sys.argv = ['fsq', '--help']\n"
                    "from fsq_ref.cli import main; main()")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert f"{missing} is not installed" in lines[0] and "pip install '.[cli]'" in lines[0]


def test_core_dependencies_are_the_four_the_quantizers_import():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = sorted(r.split(">=")[0] for r in project["dependencies"])
    assert names == ["equinox", "jax", "jaxtyping", "numpy"]
    assert set(project["optional-dependencies"]) >= {"cli", "tensorboard", "flax", "docs", "dev"}


def venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=300)
    return path / "bin" / "python"


def pip(executable: Path, *args: str) -> None:
    subprocess.run([str(executable), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args], check=True,
                   timeout=1200)


@pytest.mark.slow
def test_the_wheel_installs_the_core_then_the_cli(tmp_path):
    """Needs PyPI (or pip's cache) for jax and the rest; minutes."""
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)], check=True, timeout=900,
                   capture_output=True)
    (wheel,) = dist.glob("fsq_ref-*.whl")
    assert len(list(dist.glob("fsq_ref-*.tar.gz"))) == 1
    names = zipfile.ZipFile(wheel).namelist()
    assert "fsq_ref/py.typed" in names and "fsq_ref/training/train.py" in names
    assert not any(n.startswith(("tests/", "benchmarks/", "docs/")) for n in names)

    core = venv(tmp_path / "core")
    pip(core, str(wheel))
    installed = {d["name"].lower() for d in json.loads(subprocess.run(
        [str(core), "-m", "pip", "list", "--format=json"], capture_output=True, text=True, check=True).stdout)}
    assert {"jax", "jaxlib", "numpy", "equinox", "jaxtyping"} <= installed
    assert not installed & {"click", "optax", "pillow", "safetensors", "flax", "tensorboardx"}
    # The README's quantizer examples, from outside the source tree.
    from helpers import python_blocks

    for block in python_blocks("levels_for(2**10)") + python_blocks("fsq = FSQ((8, 5, 5, 5))") + python_blocks(
            "from fsq_ref import FSQBottleneck"):
        result = python(block, str(core), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    fsq = tmp_path / "core" / "bin" / "fsq"
    result = subprocess.run([str(fsq), "--help"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "the 'cli' extra" in result.stderr

    pip(core, f"{wheel}[cli]")
    assert subprocess.run([str(fsq), "--help"], capture_output=True, timeout=300).returncode == 0
    train = ["train", "autoencoder", "--data", "procedural:64", "--preset", "tiny", "--steps", "2", "--batch-size", "8",
             "--eval-every", "0", "--workdir", str(tmp_path / "run")]
    run = subprocess.run([str(fsq), *train], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "run" / "checkpoint.fsq").is_file()
