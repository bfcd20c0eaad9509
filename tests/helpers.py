"""Helpers that several test modules share: running the `fsq` command in-process and checking its one-line errors,
and reading the Python snippets of the documentation.

A plain module, imported as `from helpers import ...` (pytest puts tests/ on the import path), so that no test module
imports another one: each stays whole on its pytest-xdist worker (`--dist loadfile`).
"""

import re
from pathlib import Path

from click.testing import CliRunner

from fsq_ref.cli.commands import main

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def invoke(*args):
    """`fsq ARGS...` in this process: a click `Result` with `exit_code`, `output` and `stderr`."""
    return _runner().invoke(main, [str(a) for a in args])


def _runner() -> CliRunner:
    """A runner that keeps stderr apart (`result.stderr`): click 8.2+ always does and has no `mix_stderr`; click 8.1,
    our floor, mixes it into the output unless told not to."""
    try:
        return CliRunner(mix_stderr=False)
    except TypeError:
        return CliRunner()


def assert_bad_input(result, message):
    """Exit status 2, one line naming the problem, no traceback."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.output


def python_blocks(containing: str = "") -> list[str]:
    """The ```python blocks of README.md and docs/*.md that contain `containing`."""
    return [b for page in PAGES
            for b in re.findall(r"^```python\n(.*?)^```$", page.read_text(), re.MULTILINE | re.DOTALL)
            if containing in b]
