"""How much a UViM stage II reads its input image: its teacher-forced loss on the oracle's test codes (nats per
token, as `fsq eval`'s heldout_loss) when each code is paired with its own image, with another test image (the next
one: a real scene, but the wrong one) and with the split's mean image (no scene at all).

A stage II that has learned the image scores far lower with its own image than with another one; a stage II that
predicts each token from the tokens before it and little from the image scores about the same with all three, and
decodes greedily into codes of a plausible texture for the wrong scene. The gap "another - own" is the image's
worth to stage II, in nats per token.

    python benchmarks/uvim_image_use.py runs/bench-uvim/depth-{fsq,vq-split,vq-nosplit}/lm-seed0
"""

import argparse
import dataclasses
import sys

import numpy as np

from fsq_ref.common.errors import InputError
from fsq_ref.evaluation import runs, uvim_eval


def image_use(folder: str, limit: int | None) -> dict[str, float]:
    """{pairing: held-out loss} of the stage II in `folder` on its test split (the first `limit` examples)."""
    models = runs.stage_two_models(folder)
    ds = runs.dense_data(models.header, None, None, "test", limit)
    if len(ds) < 2:
        raise InputError(f"{folder}: {len(ds)} test example; give --limit 2 or more, so that another image exists")
    print(f"{folder}: {len(ds)} test examples", file=sys.stderr, flush=True)
    codes = uvim_eval.codes_of(models.oracle, models.qstate, models.task, ds)
    mean_image = np.broadcast_to(ds.images.mean(axis=0, dtype=np.float64).round().astype(ds.images.dtype),
                                 ds.images.shape)
    pairings = {"own image": (ds, codes),
                "another image": (ds, np.roll(codes, 1, axis=0)),  # image i with the code of image i - 1
                "mean image": (dataclasses.replace(ds, images=np.ascontiguousarray(mean_image)), codes)}
    return {name: uvim_eval.heldout_loss(models.lm, models.task, uvim_eval.CodedData(images, code))
            for name, (images, code) in pairings.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", help="stage-II folders (`fsq train uvim-lm`)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N test examples")
    args = parser.parse_args()
    try:
        rows = {folder: image_use(folder, args.limit) for folder in args.folders}
    except InputError as e:
        sys.exit(f"error: {e}")
    print("| stage II | own image | another image | mean image | the image's worth (another - own) |")
    print("|---|---:|---:|---:|---:|")
    for folder, row in rows.items():
        print(f"| {folder} | {row['own image']:.3f} | {row['another image']:.3f} | {row['mean image']:.3f} | "
              f"{row['another image'] - row['own image']:.3f} |")
    print("command: python benchmarks/uvim_image_use.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
