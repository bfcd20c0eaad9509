"""Time to quality of the main job's MaskGIT: recipe levers measured side by side on one tokenizer's tokens.

The main job (`scripts/demo.sh`) is judged by the Frechet distance of its samples over that of its tokenizer's
reconstructions (1.0 would be the best these tokens allow). This script trains one MaskGIT per variant on the tokens
of a finished tokenizer (default: the main job's folder), each with a fixed budget of training sequences, so that the
variants see the same data whatever the machine's load; the last 1/20 of the training tokens is held out (never
trained on) as the validation split. Per variant:

1. held-out masked-token NLL at the end, training seconds (compilation included) and steps/s;
2. the sampling options chosen on validation: 100 samples per class for each pair of --guidance and
   --choice-temperatures, Frechet distance against the held-out training images, divided by that of as many
   reconstructions of them;
3. with the chosen pair, 100 samples per class against the 10,000 test images: Frechet distance, its ratio to the
   reconstructions' (1000 test images), precision, recall, and the classifier's accuracy on the samples' classes.

Variants are `name=OPTIONS` for `fsq train maskgit` (e.g. `lr3e-3=--learning-rate 3e-3`); --sequences fixes the
number of training sequences, so a variant's step count is sequences / batch size. A variant's folder is named by its
options and budget, and a finished one is reused.

    python benchmarks/recipe.py --run runs/demo [--sequences 115200] [--variant NAME=OPTIONS ...]
"""

import argparse
import itertools
import json
import shlex
from pathlib import Path

import numpy as np
from stages import sample_quality, seconds, train

from fsq_ref.data import datasets
from fsq_ref.evaluation import features
from fsq_ref.training import allocator, maskgit_train

VARIANTS = {  # the previous main job's recipe first, then one lever changed at a time
    "lr 1e-3, batch 64 (before)": "--learning-rate 1e-3 --batch-size 64",
    "lr 2e-3": "--learning-rate 2e-3 --batch-size 64",
    "lr 3e-3": "--learning-rate 3e-3 --batch-size 64",
    "batch 32, lr 2e-3": "--learning-rate 2e-3 --batch-size 32",
}
PER_CLASS = 100


def option(options: list[str], name: str, default: str) -> str:
    return options[options.index(name) + 1] if name in options else default


def variant(run: Path, folder: Path, options: list[str], sequences: int, classifier, splits: dict) -> dict:
    result_path = folder / "recipe.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    steps = sequences // int(option(options, "--batch-size", "64"))
    train(folder, "maskgit", "--tokens", run / "tokens-train.npz", "--steps", steps, "--eval-every", steps, *options)
    log = [json.loads(line) for line in open(folder / "metrics.jsonl")]
    nll = [r["nll"] for r in log if r.get("split") == "eval"][-1]
    tokenizer_dir = run / "tokenizer"
    ratios = {}
    for g, c in itertools.product(splits["guidance"], splits["choice_temperatures"]):
        fd = sample_quality(classifier, splits["validation"], folder, tokenizer_dir, PER_CLASS, guidance=g,
                            choice_temperature=c)
        ratios[f"{g:g},{c:g}"] = fd["frechet_distance"] / splits["validation_recon_fd"]
    chosen = min(ratios, key=ratios.get)
    g, c = map(float, chosen.split(","))
    test = sample_quality(classifier, splits["test"], folder, tokenizer_dir, PER_CLASS, guidance=g,
                          choice_temperature=c, seed=1)
    result = {"options": options, "steps": steps, "seconds": seconds(folder), "held_out_nll": nll,
              "validation_ratio": ratios, "guidance": g, "choice_temperature": c, "test": test,
              "test_ratio": test["frechet_distance"] / splits["test_recon_fd"]}
    result_path.write_text(json.dumps(result, indent=2))
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/demo", help="a main-job folder: tokenizer/ and tokens-{train,test}.npz")
    parser.add_argument("--workdir", default=None, help="where the variants train (default: RUN/recipe)")
    parser.add_argument("--sequences", type=int, default=115200,
                        help="training sequences per variant (115200: 1800 steps of 64, about the main job's)")
    parser.add_argument("--guidance", default="0.5,1", help="guidance values tried on validation")
    parser.add_argument("--choice-temperatures", default="4.5,9",
                        help="choice temperatures tried on validation (MaskGIT's is 4.5)")
    parser.add_argument("--variant", action="append", default=None, metavar="NAME=OPTIONS",
                        help="a variant to run instead of the built-in ones (repeatable)")
    args = parser.parse_args()
    allocator.keep_freed_memory()  # before JAX starts its CPU backend
    run = Path(args.run)
    workdir = Path(args.workdir or run / "recipe")
    variants = dict(v.split("=", 1) for v in args.variant) if args.variant else VARIANTS

    classifier, info = features.load_or_train("fashion-mnist")
    train_images, train_labels = datasets.load("fashion-mnist", "train").get(np.arange(60000))
    held_out = len(train_images) - len(train_images) // maskgit_train.HELD_OUT_FRACTION
    test_images, test_labels = datasets.load("fashion-mnist", "test").get(np.arange(10000))
    count, tokenizer_dir = 10 * PER_CLASS, run / "tokenizer"
    validation, validation_labels = train_images[held_out:], train_labels[held_out:]
    splits = {"guidance": [float(g) for g in args.guidance.split(",")],
              "choice_temperatures": [float(c) for c in args.choice_temperatures.split(",")],
              "validation": validation, "test": test_images,
              "validation_recon_fd": features.reconstruction_quality(classifier, validation, validation_labels,
                                                                     tokenizer_dir, count)["frechet_distance"],
              "test_recon_fd": features.reconstruction_quality(classifier, test_images, test_labels, tokenizer_dir,
                                                               count)["frechet_distance"]}
    print(f"tokens of {run / 'tokenizer'}; {args.sequences} training sequences per variant; guidance "
          f"({args.guidance}) and choice temperature ({args.choice_temperatures}) chosen on "
          f"{len(train_images) - held_out} held-out training images; reconstruction FD "
          f"{splits['validation_recon_fd']:.2f} (validation), {splits['test_recon_fd']:.2f} (test); feature "
          f"classifier accuracy {info['accuracy']:.1%}\n")
    print("| variant | steps | seconds | steps/s | held-out NLL | validation FD ratio (guidance, choice temperature) | "
          "chosen | test sample FD | test FD ratio | precision | recall | class accuracy |")
    print("|---|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|")
    for name, text in variants.items():
        options = shlex.split(text)
        folder = workdir / ("_".join(o.lstrip("-") for o in options) or "defaults") / str(args.sequences)
        r = variant(run, folder, options, args.sequences, classifier, splits)
        t = r["test"]
        val = "; ".join(f"{pair}: {ratio:.2f}x" for pair, ratio in r["validation_ratio"].items())
        print(f"| {name} | {r['steps']} | {r['seconds']:.0f} | {r['steps'] / r['seconds']:.2f} | "
              f"{r['held_out_nll']:.3f} | {val} | {r['guidance']:g}, {r['choice_temperature']:g} | "
              f"{t['frechet_distance']:.1f} | "
              f"{r['test_ratio']:.2f}x | {t['precision']:.3f} | {t['recall']:.3f} | {t['label_accuracy']:.1%} |",
              flush=True)


if __name__ == "__main__":
    main()
