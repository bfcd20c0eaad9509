"""When the training loop (`train`) stops before its schedule ends: the time budget, Ctrl-C, and the decision that
combines them after each step.

- `TimeBudget` sizes the schedule of a run that has a time limit and no step count, from the speed of its own steps;
- `StopOnInterrupt` turns the first Ctrl-C into a request to stop at the next step boundary (a second one aborts);
- `reason` decides, after each step, whether to stop: the time limit is reached, or Ctrl-C was pressed. Processes of
  a multi-process run stop together, at the same step, for process 0's reason.

A NaN or infinite loss also stops a run, without saving (`train.TrainingDiverged`): the loop checks it where it reads
the loss, at logging intervals.
"""

import signal

import jax

from fsq_ref.training import distributed

CALIBRATION_STEPS = 30  # timed to size a time-limited schedule; the warm-up always covers them

TIME, INTERRUPT = "time", "interrupt"
_REASONS = (None, TIME, INTERRUPT)  # what processes agree on, by index


class StopOnInterrupt:
    """Turns the first Ctrl-C into a request to stop at the next step boundary; a second one interrupts at once."""

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self.previous)


def reason(step: int, elapsed: float, time_limit: float | None, log_every: int,
           interrupt: StopOnInterrupt) -> str | None:
    """Why the run stops after `step`, `elapsed` seconds in: TIME (`time_limit` reached), INTERRUPT (Ctrl-C), or None
    to go on. With several processes, the question is put at logging intervals only (every `log_every` steps), and
    each process follows process 0's answer, so that all stop at the same step for the same reason; a Ctrl-C waits
    for the next interval."""
    local = TIME if time_limit is not None and elapsed >= time_limit else INTERRUPT if interrupt.requested else None
    if jax.process_count() == 1:
        return local
    if step % log_every:
        return None
    return _REASONS[distributed.agree(_REASONS.index(local))]


class TimeBudget:
    """Sizes the schedule of a run that has only a time limit, from the speed of its own steps.

    First from steps 10..CALIBRATION_STEPS (compilation excluded), to have a length before the warm-up ends; then once
    more, when about a fifth of the budget has passed, from the steps since: the first hundred or so steps run slower
    than later ones (memory is still being mapped in, caches warm up), and a schedule sized from steps 10..30 alone
    ended MaskGIT's 300 s run in the main job after 233 s (re-sized after a tenth of the budget, 490 s of 540).
    Either estimate keeps a reserve of RESERVE of the time left for logging and noise; the time of periodic
    evaluations is not budgeted for (the main job evaluates only at the end). The second sizing is skipped if a
    checkpoint may already hold the first length (the run would no longer resume to the same result), and the clock
    still stops a run that turns out slower (`reason`).
    """

    RESERVE = 0.03

    def __init__(self, time_limit: float, checkpoint_every: int):
        self.time_limit, self.checkpoint_every, self.marks, self.resize_at = time_limit, checkpoint_every, {}, None

    def times(self, step: int) -> bool:
        """Whether `size` wants the clock after this step."""
        return step in (10, CALIBRATION_STEPS, self.resize_at)

    def size(self, step: int, elapsed: float) -> int | None:
        """The schedule's length as measured at `step` (`elapsed` seconds in), or None to keep the current one."""
        self.marks[step] = elapsed
        if step == 10:
            return None
        since = 10 if step == CALIBRATION_STEPS else CALIBRATION_STEPS
        per_step = (elapsed - self.marks[since]) / (step - since)
        total = step + max(0, int((1 - self.RESERVE) * (self.time_limit - elapsed) / per_step))
        if step == CALIBRATION_STEPS:  # measure again a fifth of the budget later, if the schedule lasts that long
            later = step + max(CALIBRATION_STEPS, int(0.2 * self.time_limit / per_step))
            self.resize_at = distributed.agree(later if later < total else -1)
        elif self.checkpoint_every and step >= self.checkpoint_every:  # a checkpoint holds the first length
            return None
        return distributed.agree(total)  # every process follows process 0's steps and schedule
