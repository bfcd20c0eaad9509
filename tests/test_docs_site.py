"""The documentation site (mkdocs.yml) builds in strict mode: no broken link or anchor, no docstring the API pages
cannot render. Needs the `docs` extra; skipped without it."""

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs", reason="the docs site needs the `docs` extra (mkdocs)")
pytest.importorskip("mkdocstrings_handlers.python", reason="the docs site needs the `docs` extra (mkdocstrings-python)")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(out)],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert "WARNING" not in log, log
    return out


def test_front_page_is_the_readme_with_site_links(site):
    page = (site / "index.html").read_text()
    assert "fsq-ref" in page
    assert "Finite Scalar Quantization" in page
    # README's repository links point at the site's pages.
    assert 'href="maskgit/#the-main-job"' in page
    assert 'href="BENCHMARKS/#quantizers"' in page
    assert 'href="docs/' not in page


def test_pages_and_api_reference(site):
    for page in ("codebook-size", "maskgit", "uvim", "cli", "export", "choices", "paper-notes", "BENCHMARKS"):
        assert (site / page / "index.html").is_file(), page
    quantizers = (site / "api" / "quantizers" / "index.html").read_text()
    assert "quantize_reference" in quantizers
    assert 'id="fsq_ref.fsq.FSQ"' in quantizers
    assert 'id="fsq_ref.fsq._check_channels"' not in quantizers  # private names stay out
    assert "fsq_ref.maskgit" in (site / "api" / "models" / "index.html").read_text()
    assert "fsq_ref.training.checkpoint" in (site / "api" / "library" / "index.html").read_text()
    assert not (site / "api" / "hooks.py").exists()  # the build hook is not published
