"""The paper's MaskGIT comparison at Fashion-MNIST scale: FSQ [8,5,5,5] (1000 codes) against VQ with 1024 codes and
MaskGIT's entropy loss (`vq-entropy`: commitment 0.25, entropy weight 0.1), everything else alike.

For each quantizer: one tokenizer (default preset, --tokenizer-steps), both splits encoded, then per seed in --seeds a
MaskGIT (default preset, --maskgit-steps) trained on the train tokens, its last 1/20 held out (the validation split:
never trained on, and the only data the sampling options are chosen on). Per MaskGIT:

1. the held-out masked-token NLL along training (has it flattened?);
2. guidance and temperature chosen on validation: --val-per-class samples per class for each pair of the grid, scored
   by Frechet distance against the validation images (the classifier features of `features.py`);
3. with the chosen pair, --test-per-class samples per class scored against the whole test split: Frechet distance,
   precision, recall, and the classifier's accuracy on the samples' classes.

Each tokenizer also gets its codebook usage on the test split and the Frechet distance of its reconstructions of as
many test images as there are test samples (the best any MaskGIT on its tokens can do). Prints a table like the
paper's (mean +- std over seeds) and writes WORKDIR/results.json; finished stages in WORKDIR are reused.

    python benchmarks/maskgit_paper.py [--workdir runs/maskgit-paper] [--quick]
"""

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
from stages import fsq_cli, mean_std, sample_quality, train

from fsq_ref.data import datasets, tokens
from fsq_ref.evaluation import features
from fsq_ref.training import allocator, maskgit_train

QUANTIZERS = {
    "fsq": ("FSQ [8,5,5,5] (1000 codes)", ["--quantizer", "fsq", "--levels", "8,5,5,5"]),
    "vq-entropy": ("VQ 1024 codes, entropy loss", ["--quantizer", "vq-entropy", "--codebook-size", "1024"]),
}
QUICK = dict(tokenizer_steps=200, maskgit_steps=200, seeds="0", guidance="0,1", temperatures="1.0", val_per_class=20,
             test_per_class=50)


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def tokenizer_stage(folder: Path, options: list[str], args) -> None:
    train(folder / "tokenizer", "autoencoder", "--data", "fashion-mnist", *options, "--steps", args.tokenizer_steps,
          "--eval-every", args.tokenizer_steps)
    for split in ("train", "test"):
        if not (folder / f"tokens-{split}.npz").exists():
            fsq_cli("encode", "--workdir", folder / "tokenizer", "--split", split,
                    "--out", folder / f"tokens-{split}.npz")


def maskgit_stage(folder: Path, seed: int, classifier, validation: np.ndarray, test: np.ndarray, args) -> dict:
    run = folder / f"maskgit-seed{seed}"
    result_path = run / "paper-comparison.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    train(run, "maskgit", "--tokens", folder / "tokens-train.npz", "--steps", args.maskgit_steps,
          "--eval-every", max(1, args.maskgit_steps // 8), "--seed", seed)
    log = [json.loads(line) for line in open(run / "metrics.jsonl")]
    nll = [(r["step"], r["nll"]) for r in log if r.get("split") == "eval"]
    grid = {}
    for g, t in itertools.product(floats(args.guidance), floats(args.temperatures)):
        pair = f"{g:g},{t:g}"
        grid[pair] = sample_quality(classifier, validation, run, folder / "tokenizer", args.val_per_class,
                                    guidance=g, temperature=t, seed=seed)["frechet_distance"]
        # Sampling the grid and the test set takes minutes with no bar of its own: say where it is.
        print(f"  seed {seed}: guidance {g:g}, temperature {t:g}: validation FD {grid[pair]:.2f}", flush=True)
    best = min(grid, key=grid.get)
    g, t = map(float, best.split(","))
    print(f"  seed {seed}: sampling {10 * args.test_per_class} test samples at guidance {g:g}, temperature {t:g}",
          flush=True)
    result = {"seed": seed, "held_out_nll": nll, "validation_fd": grid, "guidance": g, "temperature": t,
              "test": sample_quality(classifier, test, run, folder / "tokenizer", args.test_per_class, guidance=g,
                                    temperature=t, seed=1000 + seed)}
    result_path.write_text(json.dumps(result, indent=2))
    return result


def tokenizer_scores(folder: Path, classifier, test: np.ndarray, test_labels: np.ndarray, count: int) -> dict:
    test_tokens = tokens.load(folder / "tokens-test.npz")
    usage = len(np.unique(test_tokens.indices)) / test_tokens.codebook_size
    recon = features.reconstruction_quality(classifier, test, test_labels, folder / "tokenizer", count)
    return {"usage": usage, "reconstruction": recon}


def last_quarter(nll: list[tuple[int, float]]) -> float:
    """The change of the held-out NLL over the last quarter of training (near 0: flattened)."""
    last_step = nll[-1][0]
    earlier = min(nll, key=lambda point: abs(point[0] - 0.75 * last_step))
    return nll[-1][1] - earlier[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/maskgit-paper")
    parser.add_argument("--tokenizer-steps", type=int, default=3000)
    parser.add_argument("--maskgit-steps", type=int, default=4000)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--guidance", default="0,0.5,1,2", help="the guidance values tried on validation")
    parser.add_argument("--temperatures", default="0.9,1.0", help="the sampling temperatures tried on validation")
    parser.add_argument("--val-per-class", type=int, default=100)
    parser.add_argument("--test-per-class", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="a check that everything runs: " + str(QUICK))
    args = parser.parse_args()
    allocator.keep_freed_memory()  # before JAX starts its CPU backend
    if args.quick:
        vars(args).update(QUICK)
    seeds = [int(s) for s in args.seeds.split(",")]

    classifier, info = features.load_or_train("fashion-mnist")
    train_images = datasets.load("fashion-mnist", "train").get(np.arange(60000))[0]
    validation = train_images[len(train_images) - len(train_images) // maskgit_train.HELD_OUT_FRACTION:]
    test_images, test_labels = datasets.load("fashion-mnist", "test").get(np.arange(10000))
    folders = {key: Path(args.workdir) / key for key in QUANTIZERS}
    for key, (name, options) in QUANTIZERS.items():
        folders[key].mkdir(parents=True, exist_ok=True)
        tokenizer_stage(folders[key], options, args)
        print(f"{name}: tokenizer done", flush=True)
    # Seed by seed, both quantizers each time: a run stopped early still holds a like-for-like comparison.
    runs = {key: [] for key in QUANTIZERS}
    for seed in seeds:
        for key, (name, _) in QUANTIZERS.items():
            runs[key].append(maskgit_stage(folders[key], seed, classifier, validation, test_images, args))
            print(f"{name}: MaskGIT seed {seed} done", flush=True)
    print("scoring the tokenizers' reconstructions of the test split", flush=True)
    results = {key: {"name": name, "runs": runs[key],
                     **tokenizer_scores(folders[key], classifier, test_images, test_labels, 10 * args.test_per_class)}
               for key, (name, _) in QUANTIZERS.items()}
    Path(args.workdir, "results.json").write_text(json.dumps({"settings": vars(args), "results": results}, indent=2))

    print(f"\nFashion-MNIST; tokenizer {args.tokenizer_steps} steps; MaskGIT {args.maskgit_steps} steps, "
          f"seeds {seeds}; "
          f"guidance and temperature chosen on {len(validation)} validation images ({args.val_per_class} samples per "
          f"class); test: {10 * args.test_per_class} samples against {len(test_images)} test images; feature "
          f"classifier accuracy {info['accuracy']:.1%}\n")
    print("| tokens | sample FD | precision | recall | class accuracy | codebook usage | recon FD | "
          "held-out NLL (last) | NLL change over the last quarter | guidance, temperature chosen |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results.values():
        test = [run["test"] for run in r["runs"]]
        column = lambda key, fmt: mean_std([t[key] for t in test], fmt)  # noqa: E731
        chosen = "; ".join(f"{run['guidance']:g}, {run['temperature']:g}" for run in r["runs"])
        print(f"| {r['name']} | {column('frechet_distance', '.2f')} | {column('precision', '.3f')} | "
              f"{column('recall', '.3f')} | {column('label_accuracy', '.1%')} | {r['usage']:.1%} | "
              f"{r['reconstruction']['frechet_distance']:.2f} | "
              f"{mean_std([run['held_out_nll'][-1][1] for run in r['runs']], '.3f')} | "
              f"{mean_std([last_quarter(run['held_out_nll']) for run in r['runs']], '+.3f')} | {chosen} |")


if __name__ == "__main__":
    main()
