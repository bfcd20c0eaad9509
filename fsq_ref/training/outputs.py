"""What a training run writes in its run folder, from process 0 alone: the checkpoint, metrics.jsonl, the logs for
TensorBoard, and the task's evaluation (its PNGs and figures). `train.run` drives it."""

import json
from pathlib import Path

from fsq_ref.training import checkpoint, distributed
from fsq_ref.training import tensorboard as board_logs


class RunOutputs:
    """What a run writes in its folder, from process 0 alone: the checkpoint, metrics.jsonl, the TensorBoard logs and
    the task's evaluation (other processes write nothing and evaluate to {})."""

    def __init__(self, task, workdir: Path, loop: dict, origin: dict | None, tensorboard: bool):
        self.task, self.workdir, self.loop, self.origin = task, workdir, loop, origin
        self.path = workdir / checkpoint.CHECKPOINT
        self.main = distributed.is_main()
        self.board = board_logs.Writer(workdir, task.pictures) if tensorboard and self.main else None
        workdir.mkdir(parents=True, exist_ok=True)

    def save(self, state, step: int, total: int | None) -> None:
        if self.main:
            checkpoint.save(self.path, {"kind": self.task.kind, "task": self.task.header, "step": step,
                                        "total_steps": total, "loop": self.loop,
                                        **({"init_from": self.origin} if self.origin else {})},
                            distributed.local(state))

    def log(self, record: dict) -> None:
        if self.main:
            with open(self.workdir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.board:
            self.board.log(record)

    def evaluate(self, state) -> dict:
        return self.task.evaluate(distributed.on_host(state), self.workdir) if self.main else {}

    def close(self) -> None:
        if self.board:
            self.board.close()
