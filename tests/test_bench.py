"""`fsq bench`: its timing helpers and the quantizer table (the training areas are exercised by the benchmark itself;
they take minutes)."""

import jax
import jax.numpy as jnp
from helpers import assert_bad_input, invoke

from fsq_ref.experiments import bench


def test_compile_counter_sees_new_shapes_only():
    f = jax.jit(lambda x: x * 3 - 1)
    five, other_five, six = jnp.ones(5), jnp.zeros(5), jnp.ones(6)  # made outside: creating arrays compiles too
    with bench.CompileCounter() as first:
        f(five).block_until_ready()
    with bench.CompileCounter() as again:
        f(five).block_until_ready()
        f(other_five).block_until_ready()
    with bench.CompileCounter() as other_shape:
        f(six).block_until_ready()
    assert (first.count, again.count, other_shape.count) == (1, 0, 1)


def test_median_seconds_times_the_requested_repeats():
    seconds, calls = bench.median_seconds(jax.jit(lambda x: x + 1), jnp.ones(10), repeats=3)
    assert calls == 3 and 0 < seconds < 1


def test_quantizer_table():
    lines = bench.quantizers(vectors=8192, repeats=1)
    assert len(lines) == 5 and all(line.startswith("|") for line in lines)
    assert "FSQ [8,5,5,5]" in lines[3] and "%" in lines[3]


def test_cli_rejects_unknown_areas():
    assert invoke("bench", "--help").exit_code == 0
    assert_bad_input(invoke("bench", "--areas", "quantizers,speed"), "unknown --areas")


def test_folder_table():
    lines = bench.folders(files=4, batch_size=4, repeats=1)
    assert len(lines) == 4 and lines[2].startswith("| 128 px | 4 |") and lines[3].startswith("| 256 px | 4 |")
    assert all(float(cell.replace(",", "")) > 0 for line in lines[2:] for cell in line.split("|")[3:5])


def test_out_writes_a_whole_current_report(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "quantizers", lambda: ["| pass | vectors/s |", "|---|---:|", "| FSQ | 1 M |"])
    out = tmp_path / "bench.md"
    out.write_text("an older report\n")
    for _ in range(2):  # the second run replaces the first, never appends
        result = invoke("bench", "--areas", "quantizers", "--out", out)
        assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "older" not in text and text.count("# Benchmarks") == 1 and text.count("## quantizers") == 1
    assert "- date: " in text and "- commit: " not in text and "commit: " in text and "- machine: " in text
    assert "| FSQ | 1 M |" in text and not list(tmp_path.glob(".*.tmp"))
