"""Where a colorization stage II's colour Frechet distance comes from.

The colour FD (`fsq eval`'s colour_fd) is the Frechet distance between Gaussians fitted to the per-image chroma
histograms of the targets and of the predictions (8 x 8 bins over Cb, Cr; x100). It adds two parts: the squared
distance between the two mean histograms (where, on average, the predicted pixels' chroma lands) and the covariance
terms (how the histograms vary from image to image). For each stage-II folder, on the test split (greedy decoding as
`fsq eval`; `--temperature T` samples), this prints both parts at several histogram resolutions, for stage II and
for its oracle, the two chroma bins whose average share of stage II's pixels is furthest from the targets' (and how
much of that excess lies on things), the mean chroma magnitude (saturation) of the predictions against the targets',
and, where the data have panoptic labels, the mean chroma error per pixel in stuff (whose colour the grey input
tells) and in things. A gap between two stage IIs that lives in the mean term is about where, on average, their
pixels' chroma lands, not about how the histograms vary from image to image.

    python benchmarks/colour_fd.py runs/bench-uvim/colorization-{fsq,vq-split,vq-nosplit}/lm-seed0
"""

import argparse
import sys

import numpy as np

from fsq_ref.common.errors import InputError
from fsq_ref.evaluation import dense_metrics, metrics, runs, uvim_eval


def chroma(images: np.ndarray) -> float:
    """Mean chroma magnitude |(Cb, Cr)| over all pixels of `images` uint8 [N, H, W, 3]."""
    return float(np.mean(np.hypot(*dense_metrics.cbcr(images))))


def chroma_error(real: np.ndarray, fake: np.ndarray, where: np.ndarray) -> float:
    """Mean |(Cb, Cr) of fake - (Cb, Cr) of real| over the pixels `where` (bool [N, H, W])."""
    (cb_fake, cr_fake), (cb_real, cr_real) = dense_metrics.cbcr(fake), dense_metrics.cbcr(real)
    return float(np.mean(np.hypot(cb_fake - cb_real, cr_fake - cr_real)[where]))


def fd_terms(real: np.ndarray, fake: np.ndarray, bins: int, things: np.ndarray | None = None) -> dict:
    """The colour FD (x100) of `fake` against `real` with `bins` per chroma axis, its mean-histogram term, and the two
    bins with the largest excess: (Cb, Cr, excess, excess on the pixels `things`), each excess a share of all pixels
    (the last None without `things`, bool [N, H, W])."""
    real_bins, fake_bins = dense_metrics.chroma_bins(real, bins), dense_metrics.chroma_bins(fake, bins)
    a, b = dense_metrics.bin_histograms(real_bins, bins), dense_metrics.bin_histograms(fake_bins, bins)
    total = 100.0 * metrics.frechet_distance(a, b)
    excess = b.mean(axis=0) - a.mean(axis=0)  # the share of all pixels each bin has too many (or too few)
    mean = 100.0 * float(np.sum(excess**2))
    on_things = lambda i: (None if things is None else
                           float(np.sum((fake_bins == i) & things) - np.sum((real_bins == i) & things)) / things.size)
    centre = lambda i: ((i // bins + 0.5) / bins - 0.5, (i % bins + 0.5) / bins - 0.5)  # (Cb, Cr) of bin i
    largest = [(*centre(i), float(excess[i]), on_things(i)) for i in np.argsort(-np.abs(excess))[:2]]
    return {"fd": total, "mean term": mean, "covariance terms": total - mean, "largest excess": largest}


def analyse(folder: str, bins: list[int], limit: int | None, seed: int, temperature: float) -> dict:
    models = runs.stage_two_models(folder, "colorization")
    ds = runs.dense_data(models.header, None, None, "test", limit)
    print(f"{folder}: decoding {len(ds)} test examples with stage II and the oracle", file=sys.stderr, flush=True)
    real = ds.images
    oracle, qstate, task = models.oracle, models.qstate, models.task
    fakes = {"oracle": uvim_eval.predict(None, oracle, qstate, task, ds)[0]["image"],
             "stage II": uvim_eval.predict(models.lm, oracle, qstate, task, ds, temperature=temperature,
                                           seed=seed)[0]["image"]}
    errors, things = {}, None
    if ds.semantic is not None:  # the error in stuff (ground, wall: their hue follows the material) and in things
        things = np.isin(ds.semantic, ds.thing_classes)
        errors = {k: {"stuff": chroma_error(real, v, ~things), "things": chroma_error(real, v, things)}
                  for k, v in fakes.items()}
    return {"chroma": {"target": chroma(real), **{k: chroma(v) for k, v in fakes.items()}}, "errors": errors,
            "bins": {n: {k: fd_terms(real, v, n, things) for k, v in fakes.items()} for n in bins}}


def parse_bins(text: str) -> list[int]:
    try:
        bins = [int(b) for b in text.split(",")]
    except ValueError:
        bins = []
    if not bins or min(bins) < 1:
        raise InputError(f"--bins {text} is not a list of bin counts: give positive integers, e.g. 4,8,16")
    return bins


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", help="colorization stage-II run folders")
    parser.add_argument("--bins", default="4,8,16", help="chroma histogram bins per axis (8: `fsq eval`'s)")
    parser.add_argument("--limit", type=int, default=None, help="first N test examples (default: all)")
    parser.add_argument("--temperature", type=float, default=0.0, help="stage II samples at T (0: greedy)")
    parser.add_argument("--seed", type=int, default=0, help="the sampling's seed")
    args = parser.parse_args()
    try:
        bins = parse_bins(args.bins)
        rows = {folder: analyse(folder, bins, args.limit, args.seed, args.temperature) for folder in args.folders}
    except InputError as e:
        sys.exit(f"error: {e}")
    print("| stage II | chroma bins | colour FD: oracle | stage II | stage II: mean-histogram term | covariance terms "
          "| stage II's largest excess: (Cb, Cr) share of all pixels (of which on things) "
          "| mean chroma: stage II (oracle, target) | chroma error, stuff / things: stage II (oracle) |")
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|")
    for folder, row in rows.items():
        c, e = row["chroma"], row["errors"]
        errors = (f"{e['stage II']['stuff']:.4f} / {e['stage II']['things']:.4f} "
                  f"({e['oracle']['stuff']:.4f} / {e['oracle']['things']:.4f})" if e else "-")
        for n, terms in row["bins"].items():
            s = terms["stage II"]
            excess = ", ".join(f"({cb:+.2f}, {cr:+.2f}) {x:+.1%}" + ("" if t is None else f" (things {t:+.1%})")
                               for cb, cr, x, t in s["largest excess"])
            print(f"| {folder} | {n} | {terms['oracle']['fd']:.4g} | {s['fd']:.4g} | {s['mean term']:.4g} | "
                  f"{s['covariance terms']:.4g} | {excess} | "
                  f"{c['stage II']:.4f} ({c['oracle']:.4f}, {c['target']:.4f}) | {errors} |")
    print("command: python benchmarks/colour_fd.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
