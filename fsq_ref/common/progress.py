"""Progress of long work, for a person at a terminal and for a log file alike.

On a terminal, `Progress` redraws one line in place: a bar, the step, the live figures, steps per second and the
time left. When standard output is not a terminal (nohup, SLURM, CI, `| tee`), redrawing would fill the log with
carriage returns, so it prints one plain line per report instead; the training loop reports once per logging
interval. `say` prints a message line in either case. Nothing here depends on the command line.
"""

import sys
import time

BAR_WIDTH = 24


def say(message: str = "") -> None:
    """Print one line now (flushed, so that a log shows it before the next long step)."""
    print(message, flush=True)


def format_seconds(seconds: float) -> str:
    """3725.2 -> '1h02m', 145 -> '2m25s', 7.3 -> '7s'."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def format_figures(figures: dict[str, float]) -> str:
    """'loss 0.0123  psnr 21.30  usage 98.2%': usage and accuracy as percentages, the rest to 4 significant digits."""
    parts = []
    for name, value in figures.items():
        if name in ("usage", "accuracy"):
            parts.append(f"{name} {value:.1%}")
        else:
            parts.append(f"{name} {value:.4g}")
    return "  ".join(parts)


class Progress:
    """Reports `step` of `total` (None while unknown) with named figures; `interactive` defaults to whether `stream`
    is a terminal."""

    def __init__(self, label: str, total: int | None, *, start: int = 0, stream=None,
                 interactive: bool | None = None):
        self.label, self.total, self.start = label, total, start
        self.stream = stream or sys.stdout
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.started = time.monotonic()
        self.drawn = False

    def report(self, step: int, figures: dict[str, float]) -> None:
        elapsed = time.monotonic() - self.started
        rate = (step - self.start) / elapsed if elapsed > 0 else 0.0
        total = f"/{self.total}" if self.total else ""
        line = f"step {step}{total}  {format_figures(figures)}  {rate:.1f} steps/s"
        if self.total and rate > 0:
            line += f"  eta {format_seconds((self.total - step) / rate)}"
        if self.interactive:
            done = min(1.0, step / self.total) if self.total else 0.0
            bar = "#" * round(done * BAR_WIDTH) + "-" * (BAR_WIDTH - round(done * BAR_WIDTH))
            self.stream.write(f"\r{self.label} [{bar}] {line}\x1b[K")
            self.drawn = True
        else:
            self.stream.write(f"{self.label}: {line}\n")
        self.stream.flush()

    def close(self) -> None:
        """Ends the redrawn line, so that what is printed next starts on a line of its own."""
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False
