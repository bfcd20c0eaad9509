"""Progress: a redrawn bar on a terminal, plain lines in a log."""

import io

from hypothesis import given
from hypothesis import strategies as st

from fsq_ref.common import progress


def test_a_log_gets_one_plain_line_per_report():
    out = io.StringIO()
    bar = progress.Progress("training x", 100, stream=out, interactive=False)
    bar.report(25, {"loss": 0.5, "usage": 0.25})
    bar.report(50, {"loss": 0.25, "usage": 0.5})
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in out.getvalue()
    assert lines[0].startswith("training x: step 25/100  loss 0.5  usage 25.0%  ") and " eta " in lines[0]


def test_a_terminal_gets_one_line_redrawn_and_ended_on_close():
    out = io.StringIO()
    bar = progress.Progress("training x", None, stream=out, interactive=True)
    bar.report(10, {"loss": 1.0})
    bar.report(20, {"loss": 0.5})
    bar.close()
    text = out.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n") and text.count("\n") == 1
    assert "step 20  loss 0.5" in text and "eta" not in text  # no total: no time left to show


@given(st.floats(0, 10**6))
def test_format_seconds_reads_back(seconds):
    text = progress.format_seconds(seconds)
    whole = int(round(seconds))
    if whole < 60:
        assert text == f"{whole}s"
    elif whole < 3600:
        minutes, rest = text[:-1].split("m")
        assert int(minutes) * 60 + int(rest) == whole
    else:
        hours, minutes = text[:-1].split("h")
        assert int(hours) * 3600 + int(minutes) * 60 == whole - whole % 60
