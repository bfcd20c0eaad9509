"""Optional TensorBoard logs (`fsq train ... --tensorboard`): what the training loop writes to metrics.jsonl, also as
TensorBoard scalars, and the pictures a task draws at each evaluation (the autoencoder's reconstructions, UViM's
predictions), in WORKDIR/tensorboard. Written with tensorboardX, the `tensorboard` extra
(the `tensorboard` extra: `pip install '.[tensorboard]'` in the clone); metrics.jsonl stays the record either way.
"""

from pathlib import Path

import numpy as np
from PIL import Image

from fsq_ref.common.errors import InputError

FOLDER = "tensorboard"  # in the run folder


class Writer:
    """Scalars of each metrics.jsonl record, under "train/NAME" or "eval/NAME" at its step; after an evaluation, the
    PNGs named in `pictures` (files in the run folder) as images."""

    def __init__(self, workdir: str | Path, pictures: tuple[str, ...] = ()):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise InputError("--tensorboard needs tensorboardX, which is not installed: pip install '.[tensorboard]' "
                             "in the clone, or pip install tensorboardX (or leave out --tensorboard)") from None
        self.workdir, self.pictures = Path(workdir), pictures
        self.writer = SummaryWriter(str(self.workdir / FOLDER))

    def log(self, record: dict) -> None:
        split, step = record["split"], record["step"]
        for name, value in record.items():
            if name not in ("split", "step") and isinstance(value, (int, float)):
                self.writer.add_scalar(f"{split}/{name}", value, step)
        for name in self.pictures if split == "eval" else ():
            path = self.workdir / name
            if path.exists():
                with Image.open(path) as image:
                    pixels = np.asarray(image.convert("RGB"))
                self.writer.add_image(Path(name).stem, pixels, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
