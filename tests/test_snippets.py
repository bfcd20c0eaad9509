"""The README's Python snippets run as written: the quantizer from Python, FSQ inside a Flax and an Equinox module."""

import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(containing: str = "") -> list[str]:
    """The ```python blocks of README.md that contain `containing`."""
    return [b for b in re.findall(r"^```python\n(.*?)^```$", README.read_text(), re.MULTILINE | re.DOTALL)
            if containing in b]


@pytest.mark.parametrize("marker, expected", [
    ("levels_for(2**10)", {}),
    ("flax.linen", {"y": (4, 16, 32), "indices": (4, 16)}),
    ("import equinox as eqx", {"y": (16, 32), "indices": (16,)}),
])
def test_readme_snippet_runs(marker, expected):
    (block,) = python_blocks(marker)
    namespace = {}
    exec(compile(block, f"README.md ({marker})", "exec"), namespace)
    for name, shape in expected.items():
        assert namespace[name].shape == shape
    if "indices" in expected:
        indices = np.asarray(namespace["indices"])
        assert indices.dtype == np.int32 and 0 <= indices.min() and indices.max() < 1000
